"""One key for everything aml stores about descriptors: the database cache, the whitening
cache, the teacher's feature files and the sharded descriptor stores are all keyed by a
`DescriptorKey`, so that none can answer for a network or a setting it was not made
with."""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Tuple, TypedDict


from aml.descriptors.extraction import DEFAULT_EXTRACTION, ORIGINAL_PIXELS, ExtractionConfig
from aml.networks.fingerprint import network_fingerprint
from aml.networks.retrieval_net import ImageRetrievalNet, multiscale_power
from aml.utils.bounds import POSITIVE_FLOAT, POSITIVE_INT, scales_problem
from aml.utils.errors import ConfigError, DataError


def _text_problem(value: Any) -> Optional[str]:
    return None if isinstance(value, str) and value else f"must be a non-empty string, got {value!r}"


def image_list_key(images: Sequence[str]) -> List[Any]:
    """What identifies the contents of an image list cheaply: each path, size and mtime.

    Replacing or truncating an image changes the key without hashing every file.

    Args:
        images: the image files.

    Returns:
        One ``[path, size in bytes, modification time in nanoseconds]`` per image; a missing
        image keys as size -1 (and time 0).

    Examples:
        >>> from aml.descriptors import image_list_key
        >>> image_list_key(["no/such/image.jpg"])
        [['no/such/image.jpg', -1, 0]]
    """
    key: List[Any] = []
    for image in images:
        try:
            stat = os.stat(image)
            key.append([str(image), stat.st_size, stat.st_mtime_ns])
        except OSError:
            key.append([str(image), -1, 0])
    return key


def images_digest(images: Sequence[str]) -> str:
    """16 hex digits of `image_list_key`: what a feature file records of the images it describes.

    Examples:
        >>> from aml.descriptors.key import images_digest
        >>> images_digest(["no/such/image.jpg"]) == images_digest(["no/such/image.jpg"])
        True
    """
    return list_key_digest(image_list_key(images))


def images_digest_as_listed(images: Sequence[str], listed: Sequence[str]) -> str:
    """`images_digest` of ``images`` as they are now (sizes, times), under the names ``listed``
    recorded for them: what a record made of ``listed`` holds while the same images, moved
    below another folder, are unchanged.

    Examples:
        >>> from aml.descriptors.key import images_digest, images_digest_as_listed
        >>> images_digest_as_listed(["no/a.jpg"], ["old/a.jpg"]) == images_digest(["old/a.jpg"])
        True
    """
    now = image_list_key(images)
    return list_key_digest([[name, size, mtime] for name, (_, size, mtime) in zip(listed, now, strict=True)])


def list_key_digest(key: List[Any]) -> str:
    """16 hex digits of an `image_list_key` (`images_digest` of the images it was made of).

    Examples:
        >>> from aml.descriptors.key import image_list_key, images_digest, list_key_digest
        >>> list_key_digest(image_list_key(["no/such/image.jpg"])) == images_digest(["no/such/image.jpg"])
        True
    """
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]


class KeyRecord(TypedDict):
    """A `DescriptorKey` as JSON fields (feature-file settings and store manifests hold them)."""

    fingerprint: str
    image_size: int
    scales: List[float]
    msp: float
    pixels: str


@dataclass(frozen=True)
class DescriptorKey:
    """What decides the descriptors a network gives an image.

    Attributes:
        fingerprint: the network's content (`network_fingerprint`).
        image_size: the longer side images are resized to.
        scales: the multi-scale factors.
        msp: the multi-scale power (the network's GeM p with several scales, else 1).
        pixels: decoding and precision (`ExtractionConfig.pixel_path`).

    Examples:
        >>> from aml.descriptors import DescriptorKey
        >>> key = DescriptorKey("3f2a9c0d1e2b4a5c", 1024, (1, 2 ** 0.5, 2 ** -0.5), msp=3.0)
        >>> key.scales
        (1.0, 1.4142135623730951, 0.7071067811865476)
        >>> DescriptorKey.from_record(key.record()) == key
        True
        >>> key = DescriptorKey.of(net, 1024, (1, 2 ** 0.5, 2 ** -0.5))  # doctest: +SKIP
        >>> key.digest(database_images)  # the cache file's name  # doctest: +SKIP
        'c0ffee...'
    """

    fingerprint: str
    image_size: int
    scales: Tuple[float, ...] = (1.0,)
    msp: float = 1.0
    pixels: str = ORIGINAL_PIXELS

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    @classmethod
    def of(
        cls,
        net: ImageRetrievalNet,
        image_size: int,
        scales: Sequence[float] = (1.0,),
        config: ExtractionConfig = DEFAULT_EXTRACTION,
        fingerprint: Optional[str] = None,
    ) -> "DescriptorKey":
        """The key of a network's descriptors at an image size and scales.

        Args:
            net: the network.
            image_size: the longer side images are resized to.
            scales: the multi-scale factors.
            config: how the descriptors are extracted (its pixel path counts).
            fingerprint: the network's `network_fingerprint`, when the caller has it;
                None: computed.

        Returns:
            The key, with the network's multi-scale power rounded to 6 decimals (it names the
            descriptors; they are encoded with the exact power, as the queries are).
        """
        scales = tuple(float(s) for s in scales)
        return cls(
            fingerprint or network_fingerprint(net),
            int(image_size),
            scales,
            round(float(multiscale_power(net, list(scales))), 6),
            config.pixel_path(net),
        )

    def check_pixels(self, config: ExtractionConfig, net: ImageRetrievalNet) -> None:
        """Refuse ``config`` when it makes other pixels than this key says.

        Descriptors would otherwise be filed under a name of other decoding or precision than
        theirs.

        Args:
            config: how the images are to be encoded.
            net: the network that encodes them (its device and transform decide ``auto``).

        Raises:
            ConfigError: naming both pixel paths (a ValueError).
        """
        used = config.pixel_path(net)
        if self.pixels != used:
            raise ConfigError(
                f"the key says the images are decoded and encoded as {self.pixels}, the extraction config as "
                f"{used}: build the key with the same config (DescriptorKey.of(net, size, scales, config))"
            )

    def record(self) -> "KeyRecord":
        """The key as JSON fields (feature-file settings, store manifests).

        Returns:
            A dict of fingerprint, image_size, scales, msp and pixels.
        """
        return {
            "fingerprint": self.fingerprint,
            "image_size": self.image_size,
            "scales": list(self.scales),
            "msp": self.msp,
            "pixels": self.pixels,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str = "the record") -> Optional["DescriptorKey"]:
        """The key a record holds, each field checked.

        Records written before a field existed get its value then: one scale, msp 1, the
        original's pixels.

        Args:
            record: a mapping as `record` writes it (other keys are ignored).
            source: what the error names (a file).

        Returns:
            The key, or None without fingerprint or image size.

        Raises:
            DataError: naming ``source`` and the field, when a field is not of its type or
                leaves its range (a file edited or damaged).
        """
        if "fingerprint" not in record or "image_size" not in record:
            return None
        scales = record.get("scales", [1.0])
        msp = record.get("msp", 1.0)
        pixels = record.get("pixels", ORIGINAL_PIXELS)
        problems = {
            "fingerprint": _text_problem(record["fingerprint"]),
            "image_size": POSITIVE_INT.problem(record["image_size"]),
            "scales": scales_problem(scales),
            "msp": POSITIVE_FLOAT.problem(msp),
            "pixels": _text_problem(pixels),
        }
        for name, problem in problems.items():
            if problem:
                raise DataError(f"{source}: {name}: {problem}; the file was edited or is damaged")
        return cls(record["fingerprint"], int(record["image_size"]), tuple(scales), float(msp), pixels)

    def digest(self, images: Sequence[str]) -> str:
        """A 16-hex name for the descriptors of some images under this key.

        It hashes the key and each image's path, size and mtime (the original's pixels add
        nothing to it, so the names of caches written before aml had other decodings stay the
        same).

        Args:
            images: the image files.

        Returns:
            16 hex digits.
        """
        fields = [self.fingerprint, image_list_key(images), self.image_size, list(self.scales), self.msp]
        if self.pixels != ORIGINAL_PIXELS:
            fields.append(self.pixels)
        return hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:16]
