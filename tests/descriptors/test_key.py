"""The one key of stored descriptors: what it holds, its digest and its records."""

import hashlib
import json

import pytest
import torch

from aml.descriptors import DescriptorKey, ExtractionConfig, image_list_key
from aml.descriptors.extraction import ORIGINAL_PIXELS
from aml.descriptors.store import StoreKey
from aml.networks import build_network


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_network("resnet18", pretrained=False).eval()


def test_the_key_of_a_network_holds_its_content_size_scales_msp_and_pixels(net):
    single = DescriptorKey.of(net, 64)
    assert single.image_size == 64 and single.scales == (1.0,) and single.msp == 1.0
    assert single.pixels == ORIGINAL_PIXELS and len(single.fingerprint) >= 16
    multi = DescriptorKey.of(net, 64, (1, 0.5))
    assert multi.scales == (1.0, 0.5) and multi.msp == pytest.approx(net.gem_p(), abs=1e-6)  # GeM's p, multi-scale
    assert DescriptorKey.of(net, 64, config=ExtractionConfig(decode="device")).pixels == "device-lanczos-fp32"
    assert DescriptorKey.of(net, 64, fingerprint="abc").fingerprint == "abc"  # a hash the caller already has


def test_the_digest_is_the_cache_name_aml_has_always_used(tmp_path):
    images = []
    for i in range(2):
        images.append(str(tmp_path / f"{i}.jpg"))
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    key = DescriptorKey("f" * 16, 64, (1, 0.5), 3.0)
    fields = ["f" * 16, [[images[0], 1, (tmp_path / "0.jpg").stat().st_mtime_ns],
                         [images[1], 2, (tmp_path / "1.jpg").stat().st_mtime_ns]], 64, [1.0, 0.5], 3.0]
    assert image_list_key(images) == fields[1]
    assert key.digest(images) == hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:16]
    device = DescriptorKey("f" * 16, 64, (1, 0.5), 3.0, "device-fp16")
    assert device.digest(images) == hashlib.sha1(json.dumps(fields + ["device-fp16"]).encode()).hexdigest()[:16]
    (tmp_path / "1.jpg").write_bytes(b"yyy")  # an image replaced: another name
    assert key.digest(images) != hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:16]


def test_records_round_trip_and_old_records_read_as_then():
    key = DescriptorKey("ab" * 8, 362, (1.0, 0.7071), 3.0, "workers-fp16")
    assert DescriptorKey.from_record(json.loads(json.dumps(key.record()))) == key
    old = {"network": "vgg16", "fingerprint": "ab" * 8, "image_size": 362, "scales": [1.0]}  # before msp and pixels
    assert DescriptorKey.from_record(old) == DescriptorKey("ab" * 8, 362)
    assert DescriptorKey.from_record({"network": "vgg16"}) is None


@pytest.mark.parametrize("field, value, message", [
    ("scales", 2, r"scales: must be a list of scales, got 2"),
    ("scales", [0], r"scales: every scale must be a number in \[0.0625, 4.0\]"),
    ("scales", [1] * 9, r"scales: 9 scales; at most 8"),
    ("image_size", [1], r"image_size: must be a positive integer, got \[1\]"),
    ("image_size", -5, r"image_size: must be a positive integer, got -5"),
    ("image_size", 64.5, r"image_size: must be a positive integer, got 64.5"),
    ("msp", "a", r"msp: must be a positive finite number, got 'a'"),
    ("fingerprint", 5, r"fingerprint: must be a non-empty string, got 5"),
    ("pixels", None, r"pixels: must be a non-empty string, got None"),
])
def test_a_record_of_the_wrong_types_or_ranges_is_named(field, value, message):
    """An edited manifest's scales or image size was a TypeError, a RuntimeError inside the resize,
    or a search at image size -5 that ranked silently."""
    record = dict(DescriptorKey("ab" * 8, 64).record(), **{field: value})
    with pytest.raises(ValueError, match=f"^store/manifest.json: {message}.*; the file was edited or is damaged$"):
        DescriptorKey.from_record(record, "store/manifest.json")


def test_a_store_key_is_flat_in_its_manifest_and_keeps_its_folder_tag():
    key = StoreKey(DescriptorKey("ab" * 8, 1024, (1.0, 0.7071), 3.0, "device-fp16"), "vgg16", "float16", 16384)
    assert key.record() == {"fingerprint": "ab" * 8, "network": "vgg16", "image_size": 1024, "scales": [1.0, 0.7071],
                            "msp": 3.0, "dtype": "float16", "shard_size": 16384, "pixels": "device-fp16"}
    assert key.tag() == "5ddee048"  # the name distractor stores have had since aml wrote them: found again
