"""The official class names of the eight benchmarks, in label order.

These are the datasets' own label names (one plain name per class), not the synonym lists that
methods feed to CLIP. Index ``i`` of each tuple is training id ``i`` of the benchmark
(docs/reference-protocol.md §2): ``VOC21[0]`` is background, ``ADE20K_150[0]`` is ADE class 1 ("wall"), because
``ade20k150`` applies ``reduce_zero_label``.

Sources: the PASCAL VOC 2012 devkit class list; the 59 frequent PASCAL-Context classes; the
COCO-Stuff label list (ids 1-182, of which 11 thing ids were removed from COCO); the 19
Cityscapes train classes; the first name of each row of ADE20K SceneParsing ``objectInfo150``.
"""

from __future__ import annotations

# PASCAL VOC 2012: class ids 1..20 (0 = background, 255 = void boundary).
VOC20: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
VOC21: tuple[str, ...] = ("background", *VOC20)

# PASCAL-Context, the 59 frequent classes (label PNG values 1..59; 0 = background).
PASCAL_CONTEXT_59: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
PASCAL_CONTEXT_60: tuple[str, ...] = ("background", *PASCAL_CONTEXT_59)

# The COCO-Stuff label list: entry i is category id i + 1 (1..91 things, 92..182 stuff).
COCO_STUFF_182: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
# Thing categories listed by COCO-Stuff but removed from COCO: never present in any label map.
COCO_REMOVED_IDS: frozenset[int] = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91})
COCO_LAST_THING_ID = 91  # ids 1..91 are things, 92..182 stuff

# The 171 category ids that occur, in order; training id k (0..170) is COCO_STUFF_IDS[k].
COCO_STUFF_IDS: tuple[int, ...] = tuple(i for i in range(1, 183) if i not in COCO_REMOVED_IDS)
COCO_STUFF_171: tuple[str, ...] = tuple(COCO_STUFF_182[i - 1] for i in COCO_STUFF_IDS)
# The 80 COCO thing categories (COCO-Object classes 1..80).
COCO_THING_IDS: tuple[int, ...] = tuple(i for i in COCO_STUFF_IDS if i <= COCO_LAST_THING_ID)
COCO_THINGS_80: tuple[str, ...] = tuple(COCO_STUFF_182[i - 1] for i in COCO_THING_IDS)
COCO_OBJECT_81: tuple[str, ...] = ("background", *COCO_THINGS_80)

# Cityscapes, the 19 train classes (trainIds 0..18).
CITYSCAPES_19: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# ADE20K SceneParsing (ADEChallengeData2016), classes 1..150: the first name of each row.
ADE20K_150: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator",
    "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock",
    "flag",
)  # fmt: skip

# Benchmark key -> class names in training-id order.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "voc21": VOC21,
    "pc60": PASCAL_CONTEXT_60,
    "coco_object": COCO_OBJECT_81,
    "voc20": VOC20,
    "pc59": PASCAL_CONTEXT_59,
    "coco_stuff171": COCO_STUFF_171,
    "cityscapes": CITYSCAPES_19,
    "ade20k150": ADE20K_150,
}


def benchmark_class_names(key: str) -> tuple[str, ...]:
    """The class names of benchmark ``key`` (see :data:`CLASS_NAMES`), in training-id order."""
    from ..errors import InputError

    try:
        return CLASS_NAMES[key]
    except KeyError:
        raise InputError(f"unknown benchmark {key!r}; choose one of {', '.join(CLASS_NAMES)}") from None


class_names = benchmark_class_names
