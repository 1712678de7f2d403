"""Small helpers the release builders share: finding metadata files, reading CSVs, indexing files.

Generic on purpose (no dataset names in here), so any builder under `fair_trl.data` can reuse them:

* `require_dir(data_dir, dataset)`: `data_dir` as a Path, or a ValueError saying one is required.
* `find_file(root, names, depth=1)`: the first of `names` in `root`, else in its subfolders down to
  `depth` levels (users pass either the release folder or the folder it was unpacked into), else None.
  `locate_file` is the same but raises a `FileNotFoundError` that names the expected file(s) and the
  directory searched.
* `read_csv(path, required)`: rows as dicts of stripped strings (blank cells are ""), with a `ValueError`
  naming the missing column(s), the file and the columns present when a required column is absent. A
  `header` callback can pick the header row among the first rows and rename its columns (for releases
  whose header spans several rows or spells column names loosely).
* `decodable(paths, summary)`: whether every image file decodes; a corrupt or truncated one is counted as
  ``skipped["unreadable_image"]`` (and logged once per build), so training never meets it mid-run.
* `ImageIndex(root, suffixes)`: one recursive walk of `root`; every matching file in sorted path order
  (`paths`), and lookups by name or by stem, case-insensitively (releases ship images in part folders
  such as ``..._part_1/``, ``..._part_2/``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ImageIndex", "decodable", "find_file", "locate_file", "read_csv", "require_dir"]


def decodable(paths: Iterable[Path | str], summary: Any) -> bool:
    """True when every image decodes; else counts the row in ``summary.skipped["unreadable_image"]``.

    A full decode (not just a header check), because truncated JPEGs open fine and fail only on load,
    which in training would be mid-run.
    """
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, ValueError, SyntaxError) as err:
            if not summary.skipped["unreadable_image"]:
                logger.warning(
                    "%s: skipping unreadable image %s (%s); further ones are only counted", summary.dataset, path, err
                )
            summary.skipped["unreadable_image"] += 1
            return False
    return True


def require_dir(data_dir: Path | str | None, dataset: str, what: str = "the unpacked public release") -> Path:
    """`data_dir` as a Path; a clear error when it is None (a missing directory is reported by `locate_file`)."""
    if data_dir is None:
        raise ValueError(f"{dataset}: a data directory is required ({what})")
    return Path(data_dir).expanduser()


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of `folder` sorted by name; none when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda entry: entry.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def find_file(root: Path, names: str | Sequence[str], *, depth: int = 1, ignore_case: bool = False) -> Path | None:
    """The first of `names` in `root`, else in its subfolders down to `depth` levels; None if absent.

    Shallower folders win; within a level the earlier name wins, then the first folder in sorted order.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    wanted = [name.lower() for name in names] if ignore_case else list(names)
    level = [Path(root)]
    for _ in range(depth + 1):
        found: dict[str, Path] = {}
        subfolders: list[Path] = []
        for folder in level:
            for entry in _entries(folder):
                key = entry.name.lower() if ignore_case else entry.name
                if key in wanted and entry.is_file():
                    found.setdefault(key, folder / entry.name)
                elif _is_dir(entry):
                    subfolders.append(folder / entry.name)
        for key in wanted:
            if key in found:
                return found[key]
        level = subfolders
    return None


def locate_file(
    root: Path, names: str | Sequence[str], *, dataset: str = "", depth: int = 1, ignore_case: bool = False
) -> Path:
    """`find_file`, but raises FileNotFoundError naming every accepted file name and the directory searched."""
    path = find_file(root, names, depth=depth, ignore_case=ignore_case)
    if path is not None:
        return path
    names = (names,) if isinstance(names, str) else tuple(names)
    expected = " or ".join(repr(name) for name in names)
    prefix = f"{dataset}: " if dataset else ""
    if not Path(root).is_dir():
        where = "that directory does not exist"
    elif depth <= 0:
        where = "searched only that directory"
    elif depth == 1:
        where = "searched it and its direct subfolders"
    else:
        where = f"searched it and its subfolders, {depth} levels down"
    raise FileNotFoundError(f"{prefix}metadata file {expected} not found in {str(root)!r} ({where})")


def read_csv(
    path: Path,
    required: Iterable[str] = (),
    *,
    header: Callable[[list[str]], list[str] | None] | None = None,
    errors: str = "strict",
) -> list[dict[str, str]]:
    """All rows of a CSV file as ``{column: stripped cell text}``; blank and absent cells are "".

    Cells are stripped of whitespace, the header of a UTF-8 byte-order mark, and blank lines are skipped.
    The header is the first row, or with `header` the first row for which ``header(cells)`` returns the
    column names to use (rows before it are dropped). `errors` is the decoding error handler ("replace"
    tolerates stray non-UTF-8 bytes). Raises ValueError naming the missing column(s), the file and the
    columns present when a `required` column is absent.
    """
    required = list(required)
    with open(path, newline="", encoding="utf-8-sig", errors=errors) as handle:
        lines = ([cell.strip() for cell in cells] for cells in csv.reader(handle))
        lines = (cells for cells in lines if any(cells))  # blank lines
        first: list[str] | None = None
        columns: list[str] | None = None
        for cells in lines:
            first = first or cells
            columns = header(cells) if header is not None else cells
            if columns is not None:
                present = cells  # as written, for the error message
                break
        if first is None:
            expected = f" with columns {required}" if required else ""
            raise ValueError(f"{str(path)!r} is empty: expected a CSV header row{expected}")
        if columns is None:
            raise ValueError(
                f"{str(path)!r} has no header row with the required column(s) {required}; first row: {first}"
            )
        missing = [name for name in required if name not in columns]
        if missing:
            raise ValueError(f"{str(path)!r} lacks required column(s) {missing}; columns present: {present}")
        return [{name: (cells[i] if i < len(cells) else "") for i, name in enumerate(columns)} for cells in lines]


class ImageIndex:
    """Every file under `root` whose suffix is in `suffixes`, found with one recursive walk.

    `paths` lists them all in sorted path order; symbolic links to folders are followed, each folder is
    walked once. Lookups are case-insensitive; when two files share a name (some mirrors ship the same
    part folder twice), the first found walking top-down wins: a folder's own files before those of its
    subfolders, each in name order.
    """

    def __init__(self, root: Path, suffixes: Iterable[str]) -> None:
        self.root = Path(root)
        self.suffixes = tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes)
        found: list[Path] = []
        self._walk(self.root, found, set())
        self._by_name: dict[str, Path] = {}
        for path in found:
            self._by_name.setdefault(path.name.lower(), path)
        self.paths = sorted(found)

    def _walk(self, folder: Path, found: list[Path], seen: set[tuple[int, int]]) -> None:
        try:
            stat = folder.stat()
        except OSError:
            return
        if (stat.st_dev, stat.st_ino) in seen:  # a link back up the tree, or a second link to a folder
            return
        seen.add((stat.st_dev, stat.st_ino))
        subfolders = []
        for entry in _entries(folder):
            if _is_dir(entry):
                subfolders.append(folder / entry.name)
            elif entry.name.lower().endswith(self.suffixes) and entry.is_file():
                found.append(folder / entry.name)
        for subfolder in subfolders:
            self._walk(subfolder, found, seen)

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Path | None:
        """The file called `name` (with its suffix), or None."""
        return self._by_name.get(name.strip().lower())

    def find(self, stem: str, suffixes: Sequence[str] | None = None) -> Path | None:
        """The file `stem + suffix` for the first suffix (of `suffixes`, default the index's) that exists."""
        stem = stem.strip().lower()
        for suffix in suffixes or self.suffixes:
            path = self._by_name.get(stem + suffix.lower())
            if path is not None:
                return path
        return None
