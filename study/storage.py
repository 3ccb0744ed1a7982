"""Where a study keeps its files: a local (or NFS) folder or an object store (s3://, gs://), through
one layer (pyarrow.fs) for the runner (the manifest, the trial folders), the trials' checkpoint
folders (study.execution.TrialStore) and the driver lock (study.lock).

    <storage>/<study>/study.json        the manifest: what the study was started with (study.resume)
    <storage>/<study>/driver.lock       one driver per study (study.lock)
    <storage>/<study>/trials/<key>/     each trial's checkpoints (study.execution)
    <storage>/<study>/ray-.../          Ray's experiment folders (study.tuning)

A path without a scheme is a local (or NFS) folder; anything with one (s3://, gs://, file://) is
opened with `pyarrow.fs.FileSystem.from_uri`. A local file is written crash-safe (`write_atomic`:
a crash leaves the old file or the whole new one); an object appears whole or not at all.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from study.spec import StudyError, StudySpec

MANIFEST_FILE = "study.json"  # <storage>/<name>/study.json: what the study was started with


def is_local(uri: str) -> bool:
    """A path (a local or NFS folder) rather than a URI (an object store, or file://)."""
    return "://" not in uri


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a path or URI, and the path in it."""
    return (pafs.LocalFileSystem(), uri) if is_local(uri) else pafs.FileSystem.from_uri(uri)


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


def write_atomic(path: Path, data: bytes) -> None:
    """The one crash-safe write of a local file in study/: a crash at any moment leaves the old file
    or the whole new one (a temp file beside it, flushed to disk, renamed over it)."""
    from trainables.files import atomic_write

    atomic_write(Path(path), lambda fh: fh.write(data))


class Folder:
    """A folder on a local path or an object store, its filesystem opened once."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.path = filesystem(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)  # a path, or a file:// URI

    def file(self, name: str) -> str:
        """The path of file `name` of this folder, in its filesystem."""
        return f"{self.path}/{name}"

    def read_text(self, name: str) -> str | None:
        """File `name`'s text; None when there is no such file."""
        try:
            with self.fs.open_input_stream(self.file(name)) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None
        except OSError as e:  # an object store may say so in a plain OSError
            if not self.local and any(w in str(e).lower() for w in ("not found", "does not exist", "no such")):
                return None
            raise

    def write_text(self, name: str, text: str) -> None:
        """Write file `name` whole (crash-safe on a local path), making the folder when missing."""
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
            write_atomic(Path(self.file(name)), text.encode())
            return
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(self.file(name)) as f:
            f.write(text.encode())

    def delete(self, name: str) -> None:
        """Remove file `name`; nothing when it is not there."""
        try:
            self.fs.delete_file(self.file(name))
        except FileNotFoundError:
            pass

    def folders(self) -> list[str]:
        """The names of the folders in this one (none when it is missing), sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def download(self, dest: Path, skip: tuple = ()) -> None:
        """Copy this folder's files (not its folders), but those named in `skip`, into local `dest`."""
        for f in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            if f.type == pafs.FileType.File and f.base_name not in skip:
                pafs.copy_files(f.path, str(dest / f.base_name), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem())

    def upload(self, src: Path, skip: tuple = ()) -> None:
        """Copy what local folder `src` holds, but the files named in `skip`, into this folder."""
        for f in src.iterdir():
            if f.name not in skip:
                pafs.copy_files(str(f), self.file(f.name), source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)


# ------------------------------------------------------------------ a study's folders
def study_folder(storage: str, name: str) -> str:
    """<storage>/<name>: the study's trial checkpoints, Ray folders, manifest and driver lock."""
    return join(storage, name)


def trial_folder(storage: str, study: str, key: str) -> str:
    """<storage>/<study>/trials/<key>: a trial's checkpoint folder."""
    return join(storage, study, "trials", key)


def trial_folders(storage: str, name: str) -> list[str]:
    """Names of the trial checkpoint folders the storage holds for study `name`."""
    return Folder(join(study_folder(storage, name), "trials")).folders()


def read_manifest(storage: str, name: str) -> dict | None:
    """The study's manifest (what it was started with); None when it has none."""
    text = Folder(study_folder(storage, name)).read_text(MANIFEST_FILE)
    if text is None:
        return None
    return json.loads(text) if text else {}


def write_manifest(storage: str, name: str, manifest: dict) -> None:
    Folder(study_folder(storage, name)).write_text(MANIFEST_FILE, json.dumps(manifest, sort_keys=True, indent=1))


def absolute(storage: str) -> str:
    """A local --storage as an absolute path (Ray's workers do not share our cwd); a URI as it is."""
    return str(Path(storage).resolve()) if is_local(storage) else storage


# ------------------------------------------------------------------ checks before any work
def check_storage(storage: str) -> str:
    """--storage checked for writing: a URI as it is, a local folder made absolute (a StudyError
    when it cannot be written)."""
    if not is_local(storage):
        return storage
    return str(writable_folder("--storage", storage, "or s3://..."))


def writable_folder(flag: str, path: str, also: str = "") -> Path:
    """A local folder flag (--storage, --out) checked before any work: not empty (it would mean the
    current folder), a folder or one that can be made (no file on the way), writable. Returns it
    absolute; creates nothing."""
    allowed = "allowed: a writable folder (or one that can be made in one)" + (f" {also}" if also else "")
    if not str(path).strip():
        raise StudyError(f"{flag} {path!r} is not allowed (empty: it would mean the current folder); {allowed}")
    p = Path(path).expanduser().resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StudyError(f"{flag} {path}: {probe} is not a folder; {allowed}")
    try:  # a real write (and delete) in the nearest existing folder: os.access says yes to root on a
        # read-only mount; nothing is left behind and the folder itself is not created yet
        with tempfile.TemporaryFile(dir=probe, prefix=".iqa-ls-probe-"):
            pass
    except OSError as e:
        raise StudyError(f"{flag} {path}: cannot write in {probe} ({e.strerror or e}); {allowed}") from None
    return p


def check_no_checkpoints(spec: StudySpec, storage: str) -> None:
    """Without --resume, a study's checkpoints are never picked up: refuse a name the storage holds."""
    if spec.resume:
        return
    found = trial_folders(storage, spec.name)
    manifest = Folder(study_folder(storage, spec.name)).read_text(MANIFEST_FILE)
    if found or manifest is not None:
        what = f"{len(found)} trial checkpoint folder(s)" if found else f"the study's {MANIFEST_FILE}"
        from study.flags import DEFAULT_STORAGE
        given = f"--storage {spec.storage}" + (" (the default)" if spec.storage == DEFAULT_STORAGE else "")
        raise StudyError(f"{given} already holds {what} of a study named {spec.name!r} "
                         f"({study_folder(storage, spec.name)}); pass --resume to continue that study, or "
                         "choose another --name (to start it again under this name, delete that folder and "
                         "the study's runs in MLflow: its parent run and trial runs)")
