"""Image sources: every form of image input behind one interface.

``open_images`` turns an input into an ``ImageSource`` (random access: folders, webdataset tar
shards, HF datasets loaded or saved, parquet shards, path lists, in-memory images and tensors)
or an ``ImageStream`` (read in order: streamed HF datasets). ``open_image_source`` is the same
for APIs that need random access. One module per form; ``open`` decides which form an input is.
"""

from sae_vlm_plugin.images.folders import IMAGE_EXTENSIONS, SPLIT_FOLDERS
from sae_vlm_plugin.images.open import FORMS, ImageInput, open_image_source, open_images
from sae_vlm_plugin.images.source import BACKGROUND, ImageReadError, ImageSource, to_rgb
from sae_vlm_plugin.images.stream import ImageStream, StreamItem

__all__ = [
    "BACKGROUND",
    "FORMS",
    "IMAGE_EXTENSIONS",
    "SPLIT_FOLDERS",
    "ImageInput",
    "ImageReadError",
    "ImageSource",
    "ImageStream",
    "StreamItem",
    "open_image_source",
    "open_images",
    "to_rgb",
]
