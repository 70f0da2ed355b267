use super::journal::{Journal, Parsed, Print, leftover_name, print_of, read_journal};
use super::*;

/// Settles an interrupted write whose journal is in `dir` (see the module docs): `Ok(None)`
/// when there is none, else the note saying what was done. The error names the journal or
/// a file, and says how to fix it by hand.
pub(in crate::files) fn recover(dir: &Path) -> crate::Result<Option<String>> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let path = dir.join(JOURNAL);
    match path.symlink_metadata() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(source) => return Err(PkiError::Io { path, source }),
        Ok(_) => {}
    }
    let mut locks = Locks::default();
    locks.lock(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    recover_locked(dir, &mut locks)
}

/// [`recover`] with `dir` locked by the caller.
pub(super) fn recover_locked(dir: &Path, locks: &mut Locks) -> crate::Result<Option<String>> {
    let path = dir.join(JOURNAL);
    let fail = |source: io::Error| PkiError::Io {
        path: path.clone(),
        source,
    };
    let Some(text) = read_journal(&path).map_err(fail)? else {
        return Ok(None);
    };
    let j = match Journal::parse(&text) {
        Parsed::Journal(j) => j,
        Parsed::Torn => {
            std::fs::remove_file(&path).map_err(fail)?;
            let _ = sync_dir(dir);
            return Ok(Some(format!(
                "{}: removed the journal of a write interrupted before it replaced any file \
                 (every file is as before it)",
                dir.display()
            )));
        }
        Parsed::Foreign(why) => {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{why}. Check the files (meshctl certs verify {}), then remove it: rm {}",
                    quote(dir),
                    quote(&path)
                ),
            )));
        }
    };
    if !j.dirs.iter().any(|d| same_dir(d, dir)) {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "belongs to a write into {}, not into this directory (it was copied or moved \
                 here): remove it (rm {})",
                j.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                quote(&path)
            ),
        )));
    }
    for d in &j.dirs {
        match locks.lock(d) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(PkiError::Io {
                    path: d.clone(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    let plan = plan(&j)
        .map_err(fail)?
        .map_err(|problems| fail(io::Error::other(refusal(&j, &problems))))?;
    act(&j, &plan.steps).map_err(|(p, e)| PkiError::Io {
        path: p,
        source: io::Error::new(
            e.kind(),
            format!(
                "settling an interrupted write failed: {e}. Its journal {} stays: fix the cause \
                 and run this again",
                path.display()
            ),
        ),
    })?;
    let dirs: Vec<Dir> = j
        .dirs
        .iter()
        .map(|d| Dir {
            path: d.clone(),
            abs: d.clone(),
        })
        .collect();
    let _ = sync_dirs(&dirs);
    for d in &j.dirs {
        let other = d.join(JOURNAL);
        let ours = matches!(
            read_journal(&other).map(|t| t.map(|t| Journal::parse(&t))),
            Ok(Some(Parsed::Journal(o))) if o.txn == j.txn
        );
        if ours {
            std::fs::remove_file(&other).map_err(|source| PkiError::Io {
                path: other,
                source,
            })?;
        }
    }
    let _ = sync_dirs(&dirs);
    Ok(Some(note(dir, &j, &plan)))
}

/// What recovery does with one entry; the staged file always goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The target stays as it is; its kept copy goes.
    Stay,
    /// The kept copy goes back over the target.
    Restore,
    /// The target did not exist before: it goes.
    Remove,
}

/// What the recovery rule decided.
struct Plan {
    /// Every target held its new contents.
    forward: bool,
    /// One per entry.
    steps: Vec<Step>,
}

/// The recovery rule's plan, or what makes it undecidable (one line per file).
fn plan(j: &Journal) -> io::Result<Result<Plan, Vec<String>>> {
    let mut prints = Vec::new();
    for e in &j.entries {
        prints.push(print_of(&e.target)?);
    }
    if j.entries
        .iter()
        .zip(&prints)
        .all(|(e, p)| *p == Print::File(e.new))
    {
        return Ok(Ok(Plan {
            forward: true,
            steps: vec![Step::Stay; j.entries.len()],
        }));
    }
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for (e, p) in j.entries.iter().zip(&prints) {
        let kept_ok = match &e.kept {
            Some(k) => print_of(k)? == e.old,
            None => false,
        };
        if *p == e.old {
            steps.push(Step::Stay);
        } else if *p != Print::File(e.new) {
            problems.push(format!(
                "{} holds neither its previous nor its new contents (changed after the write \
                 was interrupted)",
                e.target.display()
            ));
        } else if e.old == Print::Absent {
            steps.push(Step::Remove);
        } else if kept_ok {
            steps.push(Step::Restore);
        } else {
            problems.push(format!(
                "{} holds its new contents and its previous contents are gone ({} is missing \
                 or was changed)",
                e.target.display(),
                e.kept
                    .as_deref()
                    .unwrap_or(Path::new("its kept copy"))
                    .display()
            ));
        }
    }
    Ok(if problems.is_empty() {
        Ok(Plan {
            forward: false,
            steps,
        })
    } else {
        Err(problems)
    })
}

/// Carries out `steps`; the error names the path that failed.
fn act(j: &Journal, steps: &[Step]) -> Result<(), (PathBuf, io::Error)> {
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err((p.to_path_buf(), e)),
        _ => Ok(()),
    };
    for (e, step) in j.entries.iter().zip(steps) {
        match (step, &e.kept) {
            (Step::Restore, Some(k)) => {
                std::fs::rename(k, &e.target).map_err(|err| (e.target.clone(), err))?
            }
            (Step::Remove, _) => remove(&e.target)?,
            (_, Some(k)) => remove(k)?,
            _ => {}
        }
        remove(&e.tmp)?;
    }
    Ok(())
}

/// The one line saying what recovery did.
fn note(dir: &Path, j: &Journal, plan: &Plan) -> String {
    let names = |which: &dyn Fn(Step) -> bool| -> Vec<String> {
        j.entries
            .iter()
            .zip(&plan.steps)
            .filter(|(_, s)| which(**s))
            .map(|(e, _)| {
                e.target
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    let (n, at) = (j.entries.len(), dir.display());
    if plan.forward {
        return format!(
            "{at}: finished a write that was interrupted after replacing all {n} file(s) ({}); \
             removed the copies it had left",
            names(&|_| true).join(", ")
        );
    }
    let restored = names(&|s| s == Step::Restore);
    let removed = names(&|s| s == Step::Remove);
    let mut what = Vec::new();
    if !restored.is_empty() {
        what.push(format!(
            "{} hold(s) the previous contents again",
            restored.join(", ")
        ));
    }
    if !removed.is_empty() {
        what.push(format!(
            "{} removed (new in that write)",
            removed.join(", ")
        ));
    }
    if what.is_empty() {
        what.push("no file had been replaced yet".into());
    }
    format!(
        "{at}: rolled back a write that was interrupted after replacing {} of {n} file(s): {}; \
         every file is as it was before that write",
        restored.len() + removed.len(),
        what.join("; ")
    )
}

/// The error text of an undecidable journal: the problems, and the commands that restore
/// either set by hand.
fn refusal(j: &Journal, problems: &[String]) -> String {
    // The commands that give each set; `None` once a file's contents for it are gone.
    let (mut back, mut forward) = (Some(Vec::new()), Some(Vec::new()));
    let add = |set: &mut Option<Vec<String>>, cmd: Option<String>| match cmd {
        Some(c) => set.iter_mut().for_each(|v| v.push(c.clone())),
        None => *set = None,
    };
    for e in &j.entries {
        let target = print_of(&e.target).ok();
        if target.as_ref() != Some(&e.old) {
            let cmd = match &e.kept {
                _ if e.old == Print::Absent => Some(format!("rm {}", quote(&e.target))),
                Some(k) if print_of(k).is_ok_and(|p| p == e.old) => {
                    Some(format!("mv {} {}", quote(k), quote(&e.target)))
                }
                _ => None,
            };
            add(&mut back, cmd);
        }
        if target != Some(Print::File(e.new)) {
            let staged = print_of(&e.tmp).is_ok_and(|p| p == Print::File(e.new));
            let cmd = staged.then(|| format!("mv {} {}", quote(&e.tmp), quote(&e.target)));
            add(&mut forward, cmd);
        }
    }
    let way = |set: Option<Vec<String>>, which: &str| match set {
        Some(cmds) => format!("to keep the {which} files, run `{}`", cmds.join("; ")),
        None => format!("the {which} files cannot all be restored (some contents are gone)"),
    };
    let journals: Vec<String> = j.dirs.iter().map(|d| quote(&d.join(JOURNAL))).collect();
    format!(
        "an interrupted write cannot be finished or rolled back safely, so nothing was \
         changed: {}. Fix it by hand: {}; {}; or regenerate the files with --force. Then \
         check them (meshctl certs verify DIR) and remove the journal(s): rm {} (and any \
         .NAME.tmp-*/.NAME.old-* left beside the files)",
        problems.join("; "),
        way(back, "previous"),
        way(forward, "new"),
        journals.join(" ")
    )
}

/// Whether `a` and `b` are the same directory (by identity where there is one).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if id_of(&ma).is_some() => id_of(&ma) == id_of(&mb),
        _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
    }
}

/// Removes what a write interrupted before its journal left in `dir` (the caller holds its
/// lock and settled any journal): staged files (`.NAME.tmp-*`), and kept names
/// (`.NAME.old-*`) of the very file still at NAME. A kept file holding other contents stays
/// (a failed undo reported it). Returns the note.
pub(super) fn sweep(dir: &Path) -> Option<String> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let Some((base, what)) = name.to_str().and_then(leftover_name) else {
            continue;
        };
        let path = dir.join(&name);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let stray = match what {
            "tmp" => meta.is_file(),
            _ => {
                let id = id_of(&meta);
                id.is_some() && file_id(&dir.join(base)).ok().flatten() == id
            }
        };
        if stray && std::fs::remove_file(&path).is_ok() {
            removed.push(name.to_string_lossy().into_owned());
        }
    }
    if removed.is_empty() {
        return None;
    }
    let _ = sync_dir(dir);
    removed.sort();
    Some(format!(
        "{}: removed {} file(s) left by a write interrupted before it replaced any file: {}",
        dir.display(),
        removed.len(),
        removed.join(", ")
    ))
}
