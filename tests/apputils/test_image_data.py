"""Image files checked before training: unreadable, truncated, empty, bomb and looping entries of an ImageFolder
tree stop the run with one line, or are left out with --bad-images skip."""
import os
import struct
import zlib

import pytest
from PIL import Image, ImageFile
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from distill_ee.apputils.app import main
from distill_ee.apputils.datasets import dataset_info, load_dataset
from distill_ee.apputils.datasets.image_check import DEFAULT_MAX_PIXELS, check_images, find_images, image_problem
from distill_ee.apputils.datasets.image_folder import ImageFolderSource
from distill_ee.errors import ConfigError, DataError

COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60)}
EXTENSIONS = (".jpg", ".png")


# --- writers of good and bad image files ----------------------------------------------------------------------


def write_jpeg(path, size=(16, 16), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path, quality=90)
    return path


def write_png(path, size=(16, 16), colour=(30, 30, 200)):
    Image.new("RGB", size, colour).save(path)
    return path


def write_tree(root, n_train=4, n_val=2):
    """DIR/train/<class>/ and DIR/val/<class>/ with small JPEG and PNG files (16x16)."""
    for part, n in (("train", n_train), ("val", n_val)):
        for name, colour in COLOURS.items():
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(n):
                writer = write_jpeg if i % 2 else write_png
                writer(folder / f"{i}{'.jpg' if i % 2 else '.png'}", colour=colour)
    return root


def noisy_jpeg(path, size=(64, 64)):
    """A JPEG of noise: most of the file is its entropy-coded data."""
    Image.frombytes("RGB", size, bytes((i * 7919) % 251 for i in range(size[0] * size[1] * 3))).save(path)
    return path


def truncated_jpeg(path):
    """A valid JPEG cut in half."""
    data = noisy_jpeg(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_declaring(path, width, height):
    """A small PNG whose header declares ``width`` x ``height`` pixels (its IHDR checksum recomputed)."""
    data = bytearray(write_png(path, size=(8, 8)).read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # after the signature, the IHDR length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def png_with_garbled_pixels(path):
    """A PNG whose compressed pixel data is garbage under a correct checksum: only decoding finds it."""
    data = bytearray(write_png(path, size=(32, 32)).read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4:start + 4 + length] = bytes((i * 37 + 11) % 256 for i in range(length))
    crc = zlib.crc32(bytes(data[start:start + 4 + length]))
    data[start + 4 + length:start + 8 + length] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def jpeg_with_thumbnail_segment(path, cut=False):
    """A JPEG with a complete small JPEG inside an APP15 segment (as an EXIF thumbnail would be); ``cut``:
    the main image then cut in half."""
    thumbnail = write_jpeg(path, size=(8, 8)).read_bytes()
    main_image = noisy_jpeg(path).read_bytes()
    segment = b"\xff\xef" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    data = main_image[:2] + segment + main_image[2:]
    path.write_bytes(data[: len(data) - len(main_image) // 2] if cut else data)
    return path


# --- the check of one file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", ["header", "decode"])
def test_good_images_pass_both_checks(tmp_path, check):
    files = [write_jpeg(tmp_path / "a.jpg"), write_png(tmp_path / "b.png"), write_jpeg(tmp_path / "c.jpeg", (3, 500)),
             jpeg_with_thumbnail_segment(tmp_path / "d.jpg")]
    Image.new("RGB", (20, 20)).save(tmp_path / "e.jpg", progressive=True)
    Image.new("L", (9, 9)).save(tmp_path / "f.png")
    files += [tmp_path / "e.jpg", tmp_path / "f.png"]
    assert [image_problem(str(f), check) for f in files] == [None] * len(files)


def test_bytes_after_the_end_of_a_jpeg_are_allowed_as_pil_allows_them(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg")
    path.write_bytes(path.read_bytes() + b"\0" * 10_000)
    assert image_problem(str(path)) is None
    Image.open(path).load()


@pytest.mark.parametrize("check", ["header", "decode"])
def test_each_kind_of_bad_file_gets_its_reason(tmp_path, check):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("a caption, not a picture\n")
    (tmp_path / "random.jpg").write_bytes(bytes((i * 7919) % 251 for i in range(3000)))
    truncated_jpeg(tmp_path / "half.jpg")
    png = write_png(tmp_path / "half.png", size=(64, 64))
    png.write_bytes(png.read_bytes()[:100])
    reasons = {name: image_problem(str(tmp_path / name), check)
               for name in ("zero.jpg", "text.jpg", "random.jpg", "half.jpg", "half.png")}
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert reasons["text.jpg"] == reasons["random.jpg"] == "not an image (PIL recognises no image format in it)"
    assert reasons["half.jpg"] == "truncated: the JPEG ends before its end-of-image marker"
    assert reasons["half.png"].startswith("damaged: ")
    assert all("\n" not in reason for reason in reasons.values())


def test_a_truncated_jpeg_is_found_even_with_an_end_marker_in_its_header(tmp_path):
    path = jpeg_with_thumbnail_segment(tmp_path / "a.jpg", cut=True)
    assert b"\xff\xd9" in path.read_bytes()
    assert image_problem(str(path)) == "truncated: the JPEG ends before its end-of-image marker"


def test_only_decoding_finds_pixel_data_that_does_not_decompress(tmp_path):
    path = png_with_garbled_pixels(tmp_path / "a.png")
    assert image_problem(str(path), "header") is None
    assert image_problem(str(path), "decode").startswith("cannot be decoded: ")


def test_a_decompression_bomb_is_refused_without_decoding_it(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    above = png_declaring(tmp_path / "above.png", 10_000, 10_000)
    huge = png_declaring(tmp_path / "huge.png", 100_000, 100_000)
    assert image_problem(str(above), "decode") == (
        f"decompression bomb: 10000x10000 = 100,000,000 pixels, above the limit of {DEFAULT_MAX_PIXELS:,}")
    assert image_problem(str(huge), "decode").startswith("decompression bomb: more than ")
    assert loads == []


def test_the_pixel_limit_is_configurable(tmp_path):
    path = write_png(tmp_path / "a.png", size=(16, 16))
    assert image_problem(str(path), max_pixels=256) is None
    assert image_problem(str(path), max_pixels=255) == (
        "decompression bomb: 16x16 = 256 pixels, above the limit of 255")


def test_links_fifos_and_unknown_checks(tmp_path):
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    good = write_jpeg(tmp_path / "good.jpg")
    os.symlink(good, tmp_path / "link.jpg")
    assert image_problem(str(tmp_path / "broken.jpg")) == "broken symlink"
    assert image_problem(str(tmp_path / "pipe.jpg")) == "not a regular file"
    assert image_problem(str(tmp_path / "link.jpg")) is None
    with pytest.raises(ValueError, match="header, decode"):
        check_images([str(good)], "pixels")


def test_check_images_keeps_the_order_and_the_reasons(tmp_path):
    paths = [str(write_png(tmp_path / "a.png")), str(tmp_path / "b.jpg"), str(write_png(tmp_path / "c.png"))]
    (tmp_path / "b.jpg").write_bytes(b"")
    good, bad = check_images(paths)
    assert good == [paths[0], paths[2]]
    assert [str(b) for b in bad] == [f"{paths[1]}: empty file (0 bytes)"]


# --- walking the tree -----------------------------------------------------------------------------------------


def test_find_images_lists_files_in_torchvision_order(tmp_path):
    write_tree(tmp_path)
    cat = tmp_path / "train" / "cat"
    for sub in ("a", "a b", "a/x", "B"):
        (cat / sub).mkdir()
        write_png(cat / sub / "1.PNG")
    (cat / "notes.txt").write_text("not an image")
    tree = find_images(str(cat), IMG_EXTENSIONS)
    expected = [path for path, _ in make_dataset(str(tmp_path / "train"), {"cat": 0}, IMG_EXTENSIONS)]
    assert tree.files == expected and tree.bad_folders == []


def test_a_symlink_loop_is_a_bad_folder_and_is_not_followed(tmp_path):
    write_tree(tmp_path)
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    os.symlink(tmp_path, cat / "to_root")       # an ancestor above the class folder
    os.symlink(cat, cat / "to_itself")
    (dog / "a").mkdir()
    (dog / "b").mkdir()
    os.symlink(dog / "b", dog / "a" / "to_b")   # a -> b -> a: two links that loop together
    os.symlink(dog / "a", dog / "b" / "to_a")
    looping = find_images(str(cat), EXTENSIONS)
    assert sorted(b.path for b in looping.bad_folders) == [str(cat / "to_itself"), str(cat / "to_root")]
    assert "symlink loop" in looping.bad_folders[0].reason
    assert len(looping.files) == 4
    together = find_images(str(dog), EXTENSIONS)
    assert [b.path for b in together.bad_folders] == [str(dog / "a" / "to_b" / "to_a"),
                                                      str(dog / "b" / "to_a" / "to_b")]


def test_symlinks_to_files_and_to_folders_outside_the_tree_are_followed(tmp_path):
    write_tree(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write_png(outside / "x.png")
    cat = tmp_path / "data" / "train" / "cat"
    os.symlink(outside, cat / "more")
    os.symlink(outside / "x.png", cat / "linked.png")
    tree = find_images(str(cat), EXTENSIONS)
    assert str(cat / "more" / "x.png") in tree.files and str(cat / "linked.png") in tree.files
    assert tree.bad_folders == []
    splits = load_dataset("imagefolder", str(tmp_path / "data"), valid_size=0, image_size=8)
    assert len(splits.train) == 4 + 4 + 2


def test_an_unreadable_folder_is_a_bad_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    write_tree(tmp_path)
    locked = tmp_path / "train" / "cat" / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        tree = find_images(str(tmp_path / "train" / "cat"), EXTENSIONS)
    finally:
        locked.chmod(0o755)
    assert [b.reason for b in tree.bad_folders] == ["cannot list the folder (Permission denied)"]


# --- the dataset: stop or skip --------------------------------------------------------------------------------


def test_a_bad_file_stops_the_load_with_one_line_by_default(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "val" / "dog" / "empty.jpg").write_bytes(b"")
    truncated_jpeg(tmp_path / "train" / "cat" / "half.jpg")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", str(tmp_path), image_size=8)
    first = tmp_path / "train" / "cat" / "half.jpg"
    assert str(err.value) == (f"{first}: truncated: the JPEG ends before its end-of-image marker "
                              "(and 1 more; --bad-images skip leaves them out)")


def test_skip_leaves_bad_files_out_and_logs_the_count(tmp_path, caplog):
    write_tree(tmp_path)
    (tmp_path / "train" / "cat" / "text.jpg").write_text("hello")
    (tmp_path / "val" / "dog" / "empty.png").write_bytes(b"")
    os.symlink(tmp_path / "train", tmp_path / "train" / "dog" / "loop")
    with caplog.at_level("WARNING", logger="distill_ee"):
        splits = load_dataset("imagefolder", str(tmp_path), valid_size=0, image_size=8, bad_images="skip")
    assert (len(splits.train), len(splits.test)) == (8, 4)
    assert all(os.path.getsize(path) for path, _ in splits.train.samples + splits.test.samples)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("dataset 'imagefolder': left out 1 folder (first: ")
    assert messages[1] == (f"dataset 'imagefolder': left out 2 unreadable images of 14 (first: "
                           f"{tmp_path / 'train' / 'cat' / 'text.jpg'}: not an image (PIL recognises no image "
                           "format in it))")
    assert splits.train[0][0].shape == (3, 8, 8)


def test_decode_check_and_the_pixel_limit_reach_the_dataset(tmp_path):
    write_tree(tmp_path)
    png_with_garbled_pixels(tmp_path / "train" / "dog" / "garbled.png")
    assert len(load_dataset("imagefolder", str(tmp_path), valid_size=0, image_size=8).train) == 9
    with pytest.raises(DataError, match="garbled.png: cannot be decoded"):
        load_dataset("imagefolder", str(tmp_path), image_size=8, image_check="decode")
    with pytest.raises(DataError, match=r"decompression bomb: 16x16 = 256 pixels, above the limit of 100"):
        ImageFolderSource().load(str(tmp_path), valid_size=0, split_seed=0, image_size=8, max_pixels=100)


def test_a_class_left_without_images_is_a_data_error(tmp_path):
    write_tree(tmp_path)
    for path in (tmp_path / "val" / "dog").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"no images in .*val for the classes dog \(2 left out as unreadable\)"):
        load_dataset("imagefolder", str(tmp_path), bad_images="skip")


def test_the_options_are_checked(tmp_path):
    write_tree(tmp_path)
    with pytest.raises(ConfigError, match="bad_images must be one of stop, skip"):
        load_dataset("imagefolder", str(tmp_path), bad_images="ignore")
    with pytest.raises(ConfigError, match="image_check must be one of header, decode"):
        load_dataset("imagenet", str(tmp_path), image_check="none")
    with pytest.raises(ConfigError, match="not read from image files"):
        load_dataset("mnist5k", bad_images="skip")


# --- through the app ------------------------------------------------------------------------------------------


def run_app(data, out, *extra):
    return main([str(data), "--dataset", "imagefolder", "--arch", "simplenet_v2_mnist", "--epochs", "1",
                 "-b", "4", "--cpu", "--no-timing", "-p", "1000", "-o", str(out), *extra])


def bad_cases():
    """(name, writer of the bad entry under DIR, its path, the start of its reason)."""
    return [
        ("corrupt", lambda d: (d / "train/cat/corrupt.jpg").write_bytes(bytes(range(256)) * 8),
         "train/cat/corrupt.jpg", "not an image"),
        ("truncated", lambda d: truncated_jpeg(d / "train/dog/half.jpg"), "train/dog/half.jpg", "truncated"),
        ("zero-byte", lambda d: (d / "val/cat/zero.jpg").write_bytes(b""), "val/cat/zero.jpg", "empty file"),
        ("text", lambda d: (d / "train/cat/text.jpg").write_text("label: cat\n"), "train/cat/text.jpg",
         "not an image"),
        ("bomb", lambda d: png_declaring(d / "train/cat/bomb.png", 12_000, 12_000), "train/cat/bomb.png",
         "decompression bomb: 12000x12000"),
        ("loop", lambda d: os.symlink(d / "train", d / "train/dog/loop"), "train/dog/loop", "symlink loop"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=[case[0] for case in bad_cases()])
def test_the_app_stops_at_a_bad_entry_with_one_line_and_no_run_directory(tmp_path, capsys, case):
    _, write_bad, where, reason = case
    data = write_tree(tmp_path / "data")
    write_bad(data)
    assert run_app(data, tmp_path / "runs") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data / where}: {reason}"), lines
    assert "Traceback" not in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_app_trains_without_the_bad_files_with_skip(tmp_path, capsys):
    data = write_tree(tmp_path / "data")
    for _, write_bad, _, _ in bad_cases():
        write_bad(data)
    assert run_app(data, tmp_path / "runs", "--bad-images", "skip") == 0
    err = capsys.readouterr().err
    assert "dataset 'imagefolder': left out 1 folder (first: " in err
    assert "dataset 'imagefolder': left out 5 unreadable images of 17 (first: " in err
    assert "Epoch 0: train loss" in err
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_the_flags_default_to_stop_and_header(tmp_path):
    from distill_ee.apputils.args import parse_args

    args = parse_args([])
    assert (args.bad_images, args.image_check) == ("stop", "header")
    assert dataset_info("imagefolder", str(write_tree(tmp_path))).num_classes == 2
