"""Layer 6, io: file formats (UAI models, evidence, results in ``uai``; PFM images in ``pfm``)."""

from .pfm import atomic_write_bytes, read_pfm, write_pfm
from .uai import (
    UAIFormatError,
    UAIModel,
    apply_evidence,
    format_uai,
    parse_evidence,
    parse_uai,
    read_evidence,
    read_map_result,
    read_mar_result,
    read_uai,
    write_map_result,
    write_mar_result,
    write_uai,
)

__all__ = [
    "read_pfm",
    "write_pfm",
    "atomic_write_bytes",
    "UAIFormatError",
    "UAIModel",
    "read_uai",
    "parse_uai",
    "write_uai",
    "format_uai",
    "read_evidence",
    "parse_evidence",
    "apply_evidence",
    "write_map_result",
    "write_mar_result",
    "read_map_result",
    "read_mar_result",
]
