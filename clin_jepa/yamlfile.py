"""Reading a small YAML file safely: bounded size, UTF-8, PyYAML's safe loader, duplicate keys refused.

Site configs and concept catalogs come from hospital IT and federations; every way such a file can be
wrong ends in one :class:`ConfigError` paragraph, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from clin_jepa.errors import ConfigError

MAX_YAML_BYTES = 1 << 20


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_file(path: Path, what: str) -> Any:
    """A small UTF-8 YAML file parsed safely; :class:`ConfigError` for anything else."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: the {what} is larger than {MAX_YAML_BYTES >> 20} MiB; a {what} is a "
                          f"short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}); save it as "
                          f"UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
