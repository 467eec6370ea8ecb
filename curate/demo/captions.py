"""Web-style captions for the demo pool: varied templates, class synonyms, spam, off-topic.

The templates imitate the kinds of alt-text a web crawl collects (plain descriptions,
social-media posts, shop listings, stock-photo titles), so that a caption's class is only
recoverable through a synonym and its context, as in LAION/DataComp-style pools.
Every choice comes from a seeded numpy generator: same seed, same captions.
"""

from __future__ import annotations

import numpy as np

# CIFAR-10 order. Generic synonyms only: a caption must stay true for any image of the class.
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "aeroplane"),
    "automobile": ("car", "automobile", "sedan", "auto", "hatchback", "family car"),
    "bird": ("bird", "little bird", "songbird", "wild bird", "birdie"),
    "cat": ("cat", "kitty", "kitten", "house cat", "feline"),
    "deer": ("deer", "doe", "stag", "fawn", "wild deer"),
    "dog": ("dog", "puppy", "pup", "doggo", "pet dog"),
    "frog": ("frog", "toad", "tree frog", "little frog", "bullfrog"),
    "horse": ("horse", "pony", "stallion", "mare", "foal"),
    "ship": ("ship", "boat", "vessel", "cargo ship", "ferry"),
    "truck": ("truck", "lorry", "fire truck", "semi truck", "delivery truck", "dump truck"),
}

# {a} = noun with its article ("an airplane"), {noun} = bare noun, {tag} = hashtag form.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of {a}",
    "a close-up photo of the {noun}",
    "a blurry photo of {a}",
    "a low resolution picture of {a}",
    "my {noun} at the park",
    "the {noun} we saw on vacation",
    "{noun} for sale, great condition",
    "used {noun}, best price, pick up only",
    "{A}",
    "{A} seen from the side",
    "image of {a} outdoors",
    "look at this {noun}! #{tag} #photography",
    "so proud of my {noun} #{tag}",
    "{noun} wallpaper hd free download",
    "stock photo: {a} in natural light",
    "{A}. Photo by a local photographer",
    "a small {noun} in the picture",
    "there is {a} in this picture",
    "picture of {a} taken last summer",
    "cute {noun} :)",
)

SPAM_CAPTIONS: tuple[str, ...] = (
    "click here for free shipping",
    "image not available",
    "IMG_{n4}.JPG",
    "DSC_{n4}.jpg",
    "photo_{n6}.png",
    "buy now!!! limited offer, 50% off",
    "no description",
    "placeholder",
    "untitled",
    "thumbnail",
    "Lorem ipsum dolor sit amet",
    "Copyright (c) 20{n2} All rights reserved",
    "subscribe to our newsletter",
    "www.best-deals-{n4}.com",
    "loading...",
    "default_image_{n2}",
)

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Captions found next to digit images on the web: some name the digit, some do not.
OFF_TOPIC_TEMPLATES: tuple[str, ...] = (
    "handwritten number {digit}",
    "the number {word} written by hand",
    "scan of my math homework",
    "house number {digit}",
    "black and white abstract art",
    "{word} - digit font preview",
    "vintage lottery ticket number {digit}",
    "signature sample, scanned",
    "postal code form field",
    "chalk drawing of a {word}",
)

# Captions of the digits world's pool (every one names its digit, as a figure or a word).
DIGIT_TEMPLATES: tuple[str, ...] = (
    "handwritten number {digit}",
    "the number {word} written by hand",
    "house number {digit}",
    "{word} - digit font preview",
    "a scanned digit {digit}",
    "the digit {word}",
    "number {digit} in black and white",
    "a photo of the number {digit}",
    "zip code digit: {digit}",
    "how to write the number {word}",
)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _render(template: str, noun: str) -> str:
    a = _article(noun)
    return template.format(a=a, A=a[0].upper() + a[1:], noun=noun, tag=noun.replace(" ", ""))


def class_captions(class_names: list[str], rng: np.random.Generator) -> list[str]:
    """One caption per class name, from a random template and a random synonym."""
    templates = rng.integers(0, len(CAPTION_TEMPLATES), size=len(class_names))
    picks = rng.random(len(class_names))
    captions = []
    for name, template, pick in zip(class_names, templates, picks, strict=True):
        synonyms = CLASS_SYNONYMS[name]
        captions.append(_render(CAPTION_TEMPLATES[template], synonyms[int(pick * len(synonyms))]))
    return captions


def spam_captions(count: int, rng: np.random.Generator) -> list[str]:
    templates = rng.integers(0, len(SPAM_CAPTIONS), size=count)
    numbers = rng.integers(0, 1_000_000, size=count)
    return [
        SPAM_CAPTIONS[t].format(n2=f"{n % 100:02d}", n4=f"{n % 10_000:04d}", n6=f"{n:06d}")
        for t, n in zip(templates, numbers, strict=True)
    ]


def off_topic_captions(digits: list[int], rng: np.random.Generator) -> list[str]:
    return _digit_captions(OFF_TOPIC_TEMPLATES, digits, rng)


def digit_captions(digits: list[int], rng: np.random.Generator) -> list[str]:
    return _digit_captions(DIGIT_TEMPLATES, digits, rng)


def _digit_captions(
    templates: tuple[str, ...], digits: list[int], rng: np.random.Generator
) -> list[str]:
    picks = rng.integers(0, len(templates), size=len(digits))
    return [
        templates[t].format(digit=d, word=DIGIT_NAMES[d])
        for t, d in zip(picks, digits, strict=True)
    ]


def other_classes(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn class different from each given label (for mismatched captions)."""
    shift = rng.integers(1, n_classes, size=len(labels))
    return (labels + shift) % n_classes
