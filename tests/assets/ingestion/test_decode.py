"""The decoder on crafted files: each good format and mode decodes, each bad file is
quarantined with the right reason."""

import io

import numpy as np
import pytest
from PIL import Image

from assets.ingestion.decode import DecodePolicy, Quarantined, decode_image, resize_canonical
from tests.assets.image_files import bad_files, encode, good_files

POLICY = DecodePolicy(size=64)


@pytest.mark.parametrize("name", sorted(good_files()))
def test_good_files_decode_to_canonical_rgb(name):
    pixels, (w, h) = decode_image(good_files()[name], POLICY)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert (w, h) == ((64, 96) if "rotated_exif" in name else (96, 64))
    assert pixels.std() > 5, f"{name} decoded to a flat image"


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_files_are_quarantined_with_reason(name):
    data, reason = bad_files()[name]
    with pytest.raises(Quarantined) as err:
        decode_image(data, POLICY)
    assert err.value.reason == reason, f"{name}: got {err.value.reason} ({err.value.detail}), want {reason}"


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    pixels, _ = decode_image(encode(img, "PNG"), DecodePolicy(size=40))
    assert pixels.min() == 255


@pytest.mark.parametrize("mode, key", [("RGB", (0, 0, 0)), ("L", 0)])
def test_a_png_colour_key_is_transparent_too(mode, key):
    """RGB and grey PNGs mark one colour transparent (tRNS) instead of carrying alpha."""
    import io

    img = Image.new(mode, (40, 40), key)
    img.paste(Image.new(mode, (20, 40), 77 if mode == "L" else (10, 20, 30)), (20, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=key)
    pixels, _ = decode_image(buf.getvalue(), DecodePolicy(size=40))
    assert (pixels[:, :20] == 255).all()  # the key colour: white, as alpha 0 is
    assert (pixels[:, 20:] == (77 if mode == "L" else (10, 20, 30))).all()  # other colours kept


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((40, 40), 32768, dtype=np.uint16)
    pixels, _ = decode_image(encode(Image.fromarray(arr), "PNG"), DecodePolicy(size=40))
    assert 120 <= pixels.mean() <= 135


def test_a_float_image_stretches_its_finite_range_and_one_without_any_is_quarantined():
    ramp = np.tile(np.linspace(-1.0, 3.0, 40, dtype=np.float32), (40, 1))
    ramp[5, 5], ramp[6, 6] = np.nan, np.inf  # a few bad pixels must not blank the image
    pixels, _ = decode_image(encode(Image.fromarray(ramp, mode="F"), "TIFF"), DecodePolicy(size=40))
    assert pixels[20, 0, 0] <= 2 and pixels[20, -1, 0] >= 253 and pixels[5, 5, 0] <= 2
    blank = np.full((40, 40), np.nan, dtype=np.float32)
    with pytest.raises(Quarantined, match="no pixel has a finite value") as err:
        decode_image(encode(Image.fromarray(blank, mode="F"), "TIFF"), DecodePolicy(size=40))
    assert err.value.reason == "undecodable"


def test_exif_orientation_is_applied():
    # A wide image with orientation 6 (rotate 90°) must come out tall: left column red.
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    pixels, (w, h) = decode_image(data, DecodePolicy(size=40, resize="pad"))
    assert (w, h) == (40, 80)
    top, bottom = pixels[:20, 10:30].mean(axis=(0, 1)), pixels[-20:, 10:30].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60, f"top of the rotated image should be red, got {top}"
    assert bottom[0] < 60 and bottom[1] < 60, f"bottom should be black, got {bottom}"


def test_resize_policies():
    img = Image.fromarray(np.zeros((50, 100, 3), np.uint8))
    assert resize_canonical(img, 32, "center_crop").min() == 0
    padded = resize_canonical(img, 32, "pad")
    assert padded[0].min() == 255 and padded[16].max() == 0


def test_center_crop_resamples_only_the_centre_square():
    """A 300,000 x 32 strip is within the pixel limit; resizing it whole before cropping took
    2.3 GB. The centre square alone is what the crop keeps."""
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 255, (32, 300_000, 3), dtype=np.uint8))
    out = resize_canonical(strip, 64, "center_crop")
    square = strip.crop((149_984, 0, 150_016, 32)).resize((64, 64), Image.Resampling.BICUBIC)
    assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - np.asarray(square, int)).mean() < 8


def test_bad_policy_names_valid_options():
    with pytest.raises(ValueError, match="valid: center_crop, pad"):
        DecodePolicy(resize="stretch")


@pytest.mark.parametrize("resize", ["center_crop", "pad"])
def test_a_large_jpeg_decoded_at_reduced_scale_matches_the_full_decode(resize):
    # a real photo from scikit-learn, 4x upscaled (2560 x 1708): libjpeg's DCT scaling may
    # decode it at 1/8 for a 64 px canonical square; the result must match the full decode
    from sklearn.datasets import load_sample_image

    big = Image.fromarray(load_sample_image("china.jpg")).resize((2560, 1708))
    data = encode(big, "JPEG", quality=95)
    policy = DecodePolicy(size=64, resize=resize)
    pixels, (w, h) = decode_image(data, policy)
    assert (w, h) == (2560, 1708)  # the file's size, not the reduced decode's
    full = resize_canonical(Image.open(io.BytesIO(data)).convert("RGB"), 64, resize)
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 4


def test_a_truncated_large_jpeg_is_still_caught_at_reduced_scale():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
    data = encode(big, "JPEG", quality=90)
    with pytest.raises(Quarantined) as err:
        decode_image(data[: len(data) // 2], DecodePolicy(size=64))
    assert err.value.reason == "truncated"
