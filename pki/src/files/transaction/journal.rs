use super::*;

/// What a path holds, read without following a symlink: how a target is recognised as
/// holding its previous or its new contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Print {
    Absent,
    /// A regular file: SHA-256 of its bytes.
    File([u8; 32]),
    /// A symlink: SHA-256 of where it points.
    Link([u8; 32]),
    /// Anything else (a FIFO, a device): its (device, inode).
    Node(u64, u64),
}

pub(super) fn print_of(path: &Path) -> io::Result<Print> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Print::Absent),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        let to = std::fs::read_link(path)?;
        return Ok(Print::Link(
            Sha256::digest(to.as_os_str().as_encoded_bytes()).into(),
        ));
    }
    if !kind.is_file() {
        let (dev, ino) = id_of(&meta).unwrap_or_default();
        return Ok(Print::Node(dev, ino));
    }
    let mut file = open_nofollow(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("changed while being read"));
    }
    let mut hash = Sha256::new();
    let mut buf = [0u8; 8192];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(Print::File(hash.finalize().into())),
            n => hash.update(&buf[..n]),
        }
    }
}

/// One file of a journal, every path absolute.
pub(super) struct Entry {
    pub(super) target: PathBuf,
    pub(super) tmp: PathBuf,
    pub(super) kept: Option<PathBuf>,
    pub(super) new: [u8; 32],
    pub(super) old: Print,
}

/// What a write is about to do. Text, one record a line, paths %-escaped, a SHA-256 of the
/// rest on the last line, so that a journal cut short by a crash is recognised as such.
pub(super) struct Journal {
    /// Tells this write's journals from another's.
    pub(super) txn: String,
    pub(super) dirs: Vec<PathBuf>,
    pub(super) entries: Vec<Entry>,
}

const MAGIC: &str = "pki-write-journal 1\n";

pub(super) enum Parsed {
    Journal(Journal),
    /// Cut short: the crash came before its sync, so before any rename.
    Torn,
    /// Not one this code wrote (why).
    Foreign(&'static str),
}

impl Journal {
    pub(super) fn render(&self) -> String {
        let mut out = format!("{MAGIC}txn {}\n", self.txn);
        for d in &self.dirs {
            out += &format!("dir {}\n", escape(d));
        }
        for e in &self.entries {
            out += &format!(
                "file {} {} {} {} {}\n",
                escape(&e.target),
                escape(&e.tmp),
                e.kept.as_deref().map_or("-".into(), escape),
                hex(&e.new),
                render_print(&e.old),
            );
        }
        let sum = hex(&Sha256::digest(out.as_bytes()).into());
        out + &format!("end {sum}\n")
    }

    pub(super) fn parse(text: &str) -> Parsed {
        if !text.starts_with(MAGIC) {
            return if MAGIC.starts_with(text) {
                Parsed::Torn
            } else {
                Parsed::Foreign("it does not start as a pki write journal does")
            };
        }
        let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
        let (body, last) = text.split_at(body_end);
        let sum = hex(&Sha256::digest(body.as_bytes()).into());
        if last != format!("end {sum}\n") {
            return Parsed::Torn;
        }
        match Journal::parse_body(&body[MAGIC.len()..]) {
            Some(j) if j.valid() => Parsed::Journal(j),
            _ => Parsed::Foreign("its records are not the ones this version writes"),
        }
    }

    fn parse_body(body: &str) -> Option<Journal> {
        let mut j = Journal {
            txn: String::new(),
            dirs: Vec::new(),
            entries: Vec::new(),
        };
        for line in body.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["txn", id] => j.txn = id.to_string(),
                ["dir", d] => j.dirs.push(unescape(d)?),
                ["file", target, tmp, kept, new, old] => j.entries.push(Entry {
                    target: unescape(target)?,
                    tmp: unescape(tmp)?,
                    kept: if kept == "-" {
                        None
                    } else {
                        Some(unescape(kept)?)
                    },
                    new: unhex(new)?,
                    old: parse_print(old)?,
                }),
                _ => return None,
            }
        }
        Some(j)
    }

    /// Every path absolute, in a directory of the journal, with the names a writer gives
    /// (recovery renames and removes only those).
    fn valid(&self) -> bool {
        let named = |p: &Path, target: &Path, what: &str| {
            let (Some(name), Some(of)) = (p.file_name(), target.file_name()) else {
                return false;
            };
            p.parent() == target.parent()
                && leftover_name(&name.to_string_lossy())
                    .is_some_and(|(base, w)| w == what && *base == *of.to_string_lossy())
        };
        !self.txn.is_empty()
            && !self.entries.is_empty()
            && self.dirs.iter().all(|d| d.is_absolute())
            && self.entries.iter().all(|e| {
                e.target.is_absolute()
                    && e.target
                        .parent()
                        .is_some_and(|p| self.dirs.iter().any(|d| d == p))
                    && named(&e.tmp, &e.target, "tmp")
                    && e.kept.as_deref().is_none_or(|k| named(k, &e.target, "old"))
            })
    }
}

fn render_print(p: &Print) -> String {
    match p {
        Print::Absent => "absent".into(),
        Print::File(h) => format!("file:{}", hex(h)),
        Print::Link(h) => format!("link:{}", hex(h)),
        Print::Node(dev, ino) => format!("node:{dev}:{ino}"),
    }
}

fn parse_print(s: &str) -> Option<Print> {
    if s == "absent" {
        return Some(Print::Absent);
    }
    let (kind, rest) = s.split_once(':')?;
    match kind {
        "file" => Some(Print::File(unhex(rest)?)),
        "link" => Some(Print::Link(unhex(rest)?)),
        "node" => {
            let (dev, ino) = rest.split_once(':')?;
            Some(Print::Node(dev.parse().ok()?, ino.parse().ok()?))
        }
        _ => None,
    }
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A path as one journal field: bytes other than `[A-Za-z0-9/._+,=@~-]` as `%XX`.
fn escape(p: &Path) -> String {
    let mut out = String::new();
    for &b in p.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/._+,=@~-".contains(&b) {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

fn unescape(s: &str) -> Option<PathBuf> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = (it.next()? as char).to_digit(16)?;
            let lo = (it.next()? as char).to_digit(16)?;
            bytes.push((hi * 16 + lo) as u8);
        } else {
            bytes.push(b);
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    }
    #[cfg(not(unix))]
    {
        String::from_utf8(bytes).ok().map(PathBuf::from)
    }
}

/// `.NAME.tmp-<pid>-<n>` or `.NAME.old-<pid>-<n>` ([`sibling`]) → (NAME, "tmp" or "old").
pub(super) fn leftover_name(name: &str) -> Option<(&str, &'static str)> {
    let rest = name.strip_prefix('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    ["tmp", "old"].into_iter().find_map(|what| {
        let at = rest.rfind(&format!(".{what}-"))?;
        let (pid, n) = rest[at + what.len() + 2..].split_once('-')?;
        let base = &rest[..at];
        (!base.is_empty() && digits(pid) && digits(n)).then_some((base, what))
    })
}

/// The journal at `path`, if any: a regular file (never a symlink) that this user wrote
/// 0600, at most 1 MiB, UTF-8.
pub(super) fn read_journal(path: &Path) -> io::Result<Option<String>> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let foreign = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{why}, so it is not a write journal of this user's: pki did not write it. \
                 Remove it (rm {}) once you know where it came from",
                quote(path)
            ),
        )
    };
    if !meta.is_file() {
        return Err(foreign("is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = crate::files::guard::effective_uid();
        if me.is_some_and(|me| meta.uid() != me) || meta.mode() & 0o077 != 0 {
            return Err(foreign(format!(
                "is owned by uid {} with mode {:04o} (pki writes its journals 0600 as the \
                 writing user)",
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    let mut text = String::new();
    let mut file = open_nofollow(path)?;
    if file.metadata()?.len() > 1 << 20 {
        return Err(foreign("is larger than 1 MiB".into()));
    }
    (&mut file)
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|_| foreign("is not UTF-8 text".into()))?;
    Ok(Some(text))
}
