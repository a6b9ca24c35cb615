//! Walking a folder for documents: the one walk that submission and pipelines share, so both
//! agree on which files are documents and on their ids.
//!
//! Symbolic links are skipped (and counted) unless asked for; then a link is followed only
//! when its target, canonicalised, stays inside the canonicalised root, and a folder is never
//! walked twice, so links can neither leak a file from elsewhere nor loop.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::path::{Path, PathBuf};

use super::{InputError, escape_name};

#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    pub follow_symlinks: bool,
}

/// A `*.txt` / `*.md` entry of the folder.
#[derive(Debug)]
pub enum FolderEntry {
    /// `id` is its path below the root, `/`-separated; `path` is where to read it (the
    /// canonical target, for a followed link); `meta` is of what `path` names.
    Document {
        id: String,
        path: PathBuf,
        location: String,
        meta: Metadata,
    },
    /// Found, but never to be read. `location` and `entry` are escaped where the name can't
    /// be shown as it is.
    Refused {
        location: String,
        entry: String,
        reason: String,
    },
}

pub fn is_document(name: &OsStr) -> bool {
    let lower = name.to_string_lossy().to_ascii_lowercase();
    lower.ends_with(".txt") || lower.ends_with(".md")
}

struct Dir {
    /// Where to list it: a real path, with no link in it below the root.
    real: PathBuf,
    /// Its path below the root, as ids name it (through the links' names).
    rel: PathBuf,
}

pub struct FolderWalk {
    root: PathBuf,
    canon_root: PathBuf,
    follow: bool,
    /// Deepest last.
    dirs: Vec<Dir>,
    /// Folders reached through links, walked after every real one: a folder is then read
    /// under its real path, and through a link only when nothing else reaches it.
    linked: Vec<Dir>,
    pending: VecDeque<FolderEntry>,
    /// Canonical folders walked or queued: a second link to one is not walked again.
    visited: BTreeSet<PathBuf>,
    other: u64,
    links: u64,
}

impl FolderWalk {
    pub fn new(root: &Path, options: WalkOptions) -> Result<Self, InputError> {
        let canon_root = std::fs::canonicalize(root).map_err(|e| {
            InputError::fatal(root.display().to_string(), format!("cannot read: {e}"))
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            dirs: vec![Dir {
                real: canon_root.clone(),
                rel: PathBuf::new(),
            }],
            linked: Vec::new(),
            visited: BTreeSet::from([canon_root.clone()]),
            canon_root,
            follow: options.follow_symlinks,
            pending: VecDeque::new(),
            other: 0,
            links: 0,
        })
    }

    /// Files that are not documents, skipped.
    pub fn skipped_other(&self) -> u64 {
        self.other
    }

    /// Symbolic links skipped: all of them by default; when following, links to a folder
    /// already walked.
    pub fn skipped_links(&self) -> u64 {
        self.links
    }

    /// What the skip message says, e.g. `2 file(s) that are not .txt or .md, 1 symlink(s)`;
    /// empty when nothing was skipped.
    pub fn skipped_summary(&self) -> String {
        summary(self.other, self.links, self.follow)
    }

    /// The next document entry; `Err` when a folder can't be listed (the input is unusable).
    pub fn next_entry(&mut self) -> Option<Result<FolderEntry, InputError>> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Some(Ok(entry));
            }
            let dir = match self.dirs.pop() {
                Some(dir) => dir,
                None => {
                    let dir = self.linked.pop()?;
                    if !self.visited.insert(dir.real.clone()) {
                        self.links += 1;
                        continue;
                    }
                    dir
                }
            };
            if let Err(e) = self.list(&dir) {
                return Some(Err(e));
            }
        }
    }

    fn list(&mut self, dir: &Dir) -> Result<(), InputError> {
        let mut entries = std::fs::read_dir(&dir.real)
            .map_err(|e| {
                InputError::fatal(self.shown(&dir.rel), format!("cannot list folder: {e}"))
            })?
            .filter_map(Result::ok)
            .collect::<Vec<_>>();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            let rel = dir.rel.join(&name);
            let real = dir.real.join(&name);
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if self.visited.insert(real.clone()) {
                    subdirs.push(Dir { real, rel });
                }
            } else if kind.is_symlink() {
                if !self.follow {
                    self.links += 1;
                    continue;
                }
                self.follow_link(&name, real, rel);
            } else if is_document(&name) {
                match entry.metadata() {
                    Ok(meta) => self.found(rel, real, meta),
                    Err(e) => self.refuse(&rel, format!("cannot read: {e}")),
                }
            } else {
                self.other += 1;
            }
        }
        subdirs.reverse();
        self.dirs.extend(subdirs);
        Ok(())
    }

    fn follow_link(&mut self, name: &OsStr, real: PathBuf, rel: PathBuf) {
        let target = std::fs::canonicalize(&real).and_then(|t| {
            let meta = std::fs::metadata(&t)?;
            Ok((t, meta))
        });
        let (target, meta) = match target {
            Ok(found) => found,
            Err(e) if is_document(name) => {
                self.refuse(
                    &rel,
                    format!("is a symbolic link whose target cannot be read: {e}"),
                );
                return;
            }
            Err(_) => {
                self.links += 1;
                return;
            }
        };
        if !target.starts_with(&self.canon_root) {
            if meta.is_dir() || is_document(name) {
                self.refuse(
                    &rel,
                    "is a symbolic link to a place outside the input folder; only links that stay inside it are followed".into(),
                );
            } else {
                self.links += 1;
            }
            return;
        }
        if meta.is_dir() {
            // Walked already (a loop, or a second way to one folder) is checked when it is
            // taken up: its documents are read once, under their real path if they have one.
            if self.visited.contains(&target) {
                self.links += 1;
            } else {
                self.linked.push(Dir { real: target, rel });
            }
        } else if is_document(name) {
            self.found(rel, target, meta);
        } else {
            self.other += 1;
        }
    }

    fn found(&mut self, rel: PathBuf, path: PathBuf, meta: Metadata) {
        match rel.to_str() {
            // Built from entry names joined with `/`: the text is the id as it always was.
            Some(id) => {
                let id = id.to_string();
                let location = self.root.join(&rel).display().to_string();
                self.pending.push_back(FolderEntry::Document {
                    id,
                    path,
                    location,
                    meta,
                });
            }
            None => self.refuse(
                &rel,
                "the file name is not valid UTF-8, so it can't be an id; rename the file (e.g. convmv -f latin1 -t utf8)".into(),
            ),
        }
    }

    fn refuse(&mut self, rel: &Path, reason: String) {
        self.pending.push_back(FolderEntry::Refused {
            location: self.shown(rel),
            entry: escape_name(rel.as_os_str()),
            reason,
        });
    }

    /// The path of `rel` below the root as the user typed it, escaped (and quoted) when it
    /// can't be shown as it is.
    fn shown(&self, rel: &Path) -> String {
        let path = self.root.join(rel);
        let escaped = escape_name(path.as_os_str());
        if path.to_str() == Some(escaped.as_str()) {
            escaped
        } else {
            format!("\"{escaped}\"")
        }
    }
}

fn summary(other: u64, links: u64, follow: bool) -> String {
    let mut parts = Vec::new();
    if other > 0 {
        parts.push(format!("{other} file(s) that are not .txt or .md"));
    }
    if links > 0 {
        parts.push(if follow {
            format!("{links} symbolic link(s) to a folder read already or to no document")
        } else {
            format!("{links} symbolic link(s); pass --follow-symlinks to read those that stay inside the folder")
        });
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    use super::*;

    /// Ids of documents, and `!location: reason` of refusals.
    fn walk(root: &Path, follow: bool) -> (Vec<String>, FolderWalk) {
        let mut w = FolderWalk::new(
            root,
            WalkOptions {
                follow_symlinks: follow,
            },
        )
        .unwrap();
        let mut out = Vec::new();
        for _ in 0..1000 {
            match w.next_entry() {
                None => return (out, w),
                Some(Ok(FolderEntry::Document { id, .. })) => out.push(id),
                Some(Ok(FolderEntry::Refused { entry, reason, .. })) => {
                    out.push(format!("!{entry}: {reason}"))
                }
                Some(Err(e)) => out.push(format!("fatal {e}")),
            }
        }
        panic!("the walk did not end: {out:?}");
    }

    #[test]
    fn links_are_skipped_unless_followed_and_then_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.txt"), "not yours").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/b.md"), "b").unwrap();
        symlink(outside.path().join("secret.txt"), root.join("link.txt")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        symlink(root.join("a.txt"), root.join("same.txt")).unwrap();
        symlink(root.join("sub"), root.join("again")).unwrap();
        symlink(root, root.join("sub/loop")).unwrap();
        symlink("/etc/passwd", root.join("passwd.txt")).unwrap();

        let (ids, w) = walk(root, false);
        assert_eq!(ids, ["a.txt", "sub/b.md"]);
        assert_eq!(w.skipped_links(), 6);
        assert!(
            w.skipped_summary().contains("6 symbolic link(s)"),
            "{}",
            w.skipped_summary()
        );

        let (ids, w) = walk(root, true);
        let outside_msg = "is a symbolic link to a place outside the input folder";
        assert_eq!(
            ids,
            [
                "a.txt".to_string(),
                format!("!link.txt: {outside_msg}; only links that stay inside it are followed"),
                format!("!out: {outside_msg}; only links that stay inside it are followed"),
                format!("!passwd.txt: {outside_msg}; only links that stay inside it are followed"),
                "same.txt".into(),
                "sub/b.md".into(),
            ]
        );
        // again/ (sub, by its real path) and the loop back to the root: not walked twice.
        assert_eq!(w.skipped_links(), 2);
    }

    #[test]
    fn a_folder_and_a_link_to_it_are_read_once_under_the_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        std::fs::create_dir_all(root.join("hidden")).unwrap();
        std::fs::write(root.join("hidden/c.txt"), "c").unwrap();
        symlink(root.join("hidden"), root.join("door")).unwrap();
        let (ids, _) = walk(&root, true);
        assert!(ids.contains(&"hidden/c.txt".to_string()), "{ids:?}");
        assert!(!ids.contains(&"door/c.txt".to_string()), "{ids:?}");
        // A chain of links that ends in a loop ends.
        symlink(root.join("l2"), root.join("l1")).unwrap();
        symlink(root.join("l1"), root.join("l2")).unwrap();
        let (ids, _) = walk(&root, true);
        assert_eq!(ids, ["hidden/c.txt"]);
    }

    #[test]
    fn names_that_are_not_utf8_are_refused_each_by_their_escaped_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [&b"n\xfe.txt"[..], b"n\xff.txt", "n\u{FFFD}.txt".as_bytes()] {
            std::fs::write(root.join(OsStr::from_bytes(name)), "x").unwrap();
        }
        let (ids, _) = walk(root, false);
        assert_eq!(
            ids,
            [
                // Sorted by bytes: U+FFFD is EF BF BD.
                "n\u{FFFD}.txt",
                r"!n\xFE.txt: the file name is not valid UTF-8, so it can't be an id; rename the file (e.g. convmv -f latin1 -t utf8)",
                r"!n\xFF.txt: the file name is not valid UTF-8, so it can't be an id; rename the file (e.g. convmv -f latin1 -t utf8)",
            ]
        );
    }
}
