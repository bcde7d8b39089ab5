"""YAML files of an input tree (a folder or a zip, vfscreen.conversion.common.InputTree), read with a loader that
reports repeated keys instead of silently keeping the last one."""
from __future__ import annotations

from pathlib import PurePosixPath

import yaml

from vfscreen.conversion.common import InputTree, ProblemLog
from vfscreen.errors import InputError


class _FirstKeyWinsLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a repeated mapping key keeps its first value and is recorded (plain YAML
    silently keeps the last), so a CT annotated twice is reported instead of half-overwritten."""

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicate_keys: list[tuple[object, int]] = []

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in mapping:
                self.duplicate_keys.append((key, key_node.start_mark.line + 1))
                continue
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def load_yaml(tree: InputTree, name: str, problems: ProblemLog | None = None):
    loader = _FirstKeyWinsLoader(tree.read_text(name))
    try:
        content = loader.get_single_data()
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise InputError(f"{tree.describe(name)}: not readable YAML ({str(error).splitlines()[0]})") from None
    finally:
        loader.dispose()
    for key, line in loader.duplicate_keys:
        if problems is not None:
            problems.skip(f"{PurePosixPath(name).name}, line {line}", f"{key!r} appears twice; the second entry")
    return content
