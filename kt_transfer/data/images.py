"""One image: decode, resize, crop, mirror, to 8-bit RGB (the network subtracts the mean).

The paper's (Caffe's) preprocessing: every image resized to 256x256, a random 227x227 crop
and a random horizontal mirror when training, the centre crop when validating, and the
per-channel mean subtracted. Here the resize (antialiased, see `resize`) happens on the fly
or offline (tools/prepare_images.py, faster to read) and, as in Caffe's offline resize, is
rounded to 8 bits (after the crop, where it costs least), so mirrors, batching
and prefetching move 4x fewer bytes than float32 would. The mean subtraction and scaling
are the network's first layer (caffenet.PixelNormalization), on the accelerator.

Where it is exact, decoding and cropping are fused: a JPEG already stored at the resize
size (the embedded dataset, a pre-resized copy of ImageNet) is decoded only inside its
crop window (`tf.io.decode_and_crop_jpeg`), bit-identical to decoding it whole and cropping
(tested for 4:4:4, 4:2:2 and 4:2:0 chroma). Any other image (another size, or a PNG,
GIF or BMP, whatever its file name says) is decoded whole, with 1 or 4 channels (grayscale,
CMYK) converted to RGB, and resized.
"""

import os

import tensorflow as tf


def crop_offsets(seed, *, training, resize_size, crop_size):
    """(top, left) of the crop: uniform from a stateless seed, or the centre."""
    if not training:
        centre = (resize_size - crop_size) // 2
        return tf.constant(centre), tf.constant(centre)
    offsets = tf.random.stateless_uniform([2], seed, 0, resize_size - crop_size + 1, tf.int32)
    return offsets[0], offsets[1]


def resize(image, size):
    """Resizes to size x size (aspect ratio not kept, as the paper's offline 256x256
    resize), float32 out. Antialiased: shrinking a 400-500 px ImageNet photo by plain
    bilinear interpolation samples 4 of every ~9 source pixels in each direction and
    aliases fine texture; the triangle filter widened by the scale factor averages them
    all, like Pillow's and ImageMagick's resize (which Caffe's recipe used)."""
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


# libjpeg decodes at 1/2, 1/4 and 1/8 scale in its IDCT. Not 1/8: it keeps only each 8x8
# block's mean, and measured 4.8 levels off the full decode (a 1300 px JPEG to 80 px).
DCT_SCALES = (1, 2, 4)


REDUCING_GAP = 2  # decode at least this many times the resize size (Pillow's thumbnail's)


def decode_jpeg_at_least(image_bytes, stored_size, size):
    """A JPEG decoded at the smallest of the DCT scales (whole, 1/2, 1/4) that keeps
    both sides at least REDUCING_GAP x `size`: an ImageNet photo of about 500x375 is
    decoded at 1/2 for an 80 px resize; for 256 px, whole. The DCT scaling averages the
    pixels it drops, and the antialiased resize that follows filters the rest, so the
    result is the full decode's within rounding (as Pillow's draft mode with a reducing
    gap of 2, which its thumbnails use); it skips most of the IDCT and colour
    conversion. 8-bit RGB out.

    Args:
      stored_size: int32 [2], the JPEG's height and width (tf.io.extract_jpeg_shape).
    """
    shortest = tf.reduce_min(stored_size)
    # A side decoded at 1/r has ceil(side / r) pixels: at least `least` when
    # side > (least - 1) * r.
    least = REDUCING_GAP * size
    fits = [shortest > (least - 1) * scale for scale in DCT_SCALES]
    index = tf.reduce_sum(tf.cast(tf.stack(fits[1:]), tf.int32))  # scales are nested
    return tf.switch_case(
        index,
        [
            (lambda scale=scale: tf.io.decode_jpeg(image_bytes, channels=3, ratio=scale))
            for scale in DCT_SCALES
        ],
    )


def decode_crop(image_bytes, seed, *, training, resize_size, crop_size):
    """Encoded image -> uint8 [crop_size, crop_size, 3]: resized, cropped, maybe mirrored.

    Args:
      image_bytes: scalar string tensor, the encoded file.
      seed: int64 [2] stateless seed (crop position and mirror); unused when not training.
      training: random crop and mirror; else the centre crop.
    Raises (as a tf.data element error, see pipeline.py): the file is not a decodable image.
    """
    top, left = crop_offsets(seed, training=training, resize_size=resize_size, crop_size=crop_size)
    is_jpeg = tf.io.is_jpeg(image_bytes)

    def fused():  # exact: no resize needed, so crop-then-decode == decode-then-crop
        # One column more than the crop where there is one: at a window's right edge
        # libjpeg upsamples subsampled chroma from fewer neighbours than a full decode
        # does; with the extra column the crop matches the full decode bit for bit.
        width = tf.minimum(crop_size + 1, resize_size - left)
        window = tf.stack([top, left, crop_size, width])
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)[:, :crop_size, :]

    def general():
        image = tf.cond(
            is_jpeg,
            lambda: decode_jpeg_at_least(image_bytes, stored_size, resize_size),
            lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
        )

        def resize_crop():
            resized = resize(image, resize_size)
            crop = resized[top : top + crop_size, left : left + crop_size, :]
            # Bilinear weights are convex, so values stay in [0, 255]: +0.5 then truncate
            # rounds to nearest without a clip.
            return tf.cast(crop + 0.5, tf.uint8)

        return tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == resize_size),
            lambda: image[top : top + crop_size, left : left + crop_size, :],
            resize_crop,
        )

    stored_size = tf.cond(
        is_jpeg, lambda: tf.io.extract_jpeg_shape(image_bytes)[:2], lambda: tf.constant([-1, -1])
    )
    image = tf.cond(tf.reduce_all(stored_size == resize_size), fused, general)
    image = tf.ensure_shape(image, [crop_size, crop_size, 3])
    return _maybe_mirror(image, seed) if training else image


def _maybe_mirror(image, seed):
    mirror = tf.random.stateless_uniform([], seed + 1) < 0.5
    return tf.cond(mirror, lambda: tf.reverse(image, axis=[1]), lambda: image)


def crop_mirror(resized, seed, *, training, resize_size, crop_size):
    """An image already decoded and resized (uint8 [resize_size, resize_size, 3]) ->
    the crop decode_crop gives for the same file and seed: the same pixels, as rounding to
    8 bits before or after the crop is the same per pixel."""
    top, left = crop_offsets(seed, training=training, resize_size=resize_size, crop_size=crop_size)
    image = tf.ensure_shape(
        resized[top : top + crop_size, left : left + crop_size, :], [crop_size, crop_size, 3]
    )
    return _maybe_mirror(image, seed) if training else image


def preprocess(image_bytes, *, training, resize_size, crop_size, seed=(0, 0)):
    """One image to the network's input, eagerly (tests, serving clients)."""
    return decode_crop(
        image_bytes,
        tf.constant(seed, tf.int64),
        training=training,
        resize_size=resize_size,
        crop_size=crop_size,
    )


def describe_bad_file(name):
    """Why a file could not be used, told from its bytes (folder sources)."""
    if not os.path.isfile(name):
        return "could not be decoded"
    with open(name, "rb") as f:
        content = f.read()
    if not content:
        return "empty file"
    if content.startswith(b"version https://git-lfs"):
        return "a git-lfs pointer, not the image (run `git lfs pull` in its repository)"
    if content[:2] == b"\xff\xd8":
        return (
            "truncated JPEG (no end-of-image marker)"
            if b"\xff\xd9" not in content[-64:]
            else "corrupt JPEG data"
        )
    if content[:8] == b"\x89PNG\r\n\x1a\n" or content[:3] == b"GIF" or content[:2] == b"BM":
        return "corrupt image data"
    return "not an image"


def decodes(path):
    """Whether the file at `path` decodes as an image (eagerly; for checks before
    training)."""
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return True
    except (tf.errors.OpError, ValueError):
        return False
