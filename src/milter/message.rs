//! A message held for content filters: kept as it came (DATA's wire form, dot-stuffed,
//! with the final dot) in memory up to a bound and in an unnamed temporary file
//! beyond it, so a large message costs bounded memory and nothing of it outlives the
//! session, refused, abandoned or crashed. Its header section is bounded (fields and
//! bytes) and read once, each field kept as offsets into it; the filters' changes are
//! bounded alike and held like the message (a new body in a [`Spool`] of its own), and
//! applied when it is passed on, reusing the bytes of every part nobody changed.

use super::protocol::{CHUNK, Modification};
use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use thiserror::Error;

/// The message bytes: memory, then a temporary file.
#[derive(Debug)]
pub(crate) struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// Bytes kept in memory at most.
    limit: usize,
}

impl Spool {
    pub(crate) fn new(limit: usize) -> Spool {
        Spool { memory: Vec::new(), file: None, len: 0, limit }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.memory.len() + bytes.len() <= self.limit {
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        if self.file.is_none() {
            // Unlinked at once: the bytes vanish with the handle, whatever happens.
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        self.file.as_mut().expect("made above").write_all(bytes)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the message went to a temporary file.
    pub(crate) fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Reads bytes `from..to` into `buf` (at most its length); 0 at the end.
    pub(crate) fn read_between(&self, from: u64, to: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(to.saturating_sub(from) as usize);
        self.read_at(from, &mut buf[..want])
    }

    /// Reads `buf.len()` bytes at most from `offset`; 0 at the end.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        match &self.file {
            None => {
                let start = offset as usize;
                let n = buf.len().min(self.memory.len() - start);
                buf[..n].copy_from_slice(&self.memory[start..start + n]);
                Ok(n)
            }
            Some(file) => {
                let mut f = file;
                f.seek(SeekFrom::Start(offset))?;
                let want = buf.len().min((self.len - offset) as usize);
                f.read(&mut buf[..want])
            }
        }
    }
}

/// The bounds of a header section (`limits.max_headers`, `limits.max_header_size`):
/// of the client's message, and of the filters' header changes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderBounds {
    /// Header fields at most.
    pub(crate) count: usize,
    /// Bytes at most: of the fields as they came (folds included, the empty line
    /// after them not), or of the names and values a filter writes.
    pub(crate) bytes: usize,
}

/// Why a message could not be held for the filters.
#[derive(Debug, Error)]
pub(crate) enum HoldError {
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("a header section over {0} bytes")]
    HeaderTooBig(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl HoldError {
    /// For a header section past its bounds: the limit (as metrics name it) and the
    /// client's reply; `None` for a local failure.
    pub(crate) fn refusal(&self) -> Option<(&'static str, &'static str)> {
        match self {
            HoldError::TooManyHeaders(_) => {
                Some(("limits.max_headers", "552 5.3.4 Error: too many header fields in the message"))
            }
            HoldError::HeaderTooBig(_) => Some(("limits.max_header_size", "552 5.3.4 Error: message header too big")),
            HoldError::Io(_) => None,
        }
    }
}

/// One header field as it came: where its lines are in the header section (CRLF and
/// folds included) and where its colon is. Its name and value are made from these
/// when a filter is shown them, so a field costs 12 bytes however it came.
#[derive(Debug, Clone, Copy)]
struct Field {
    start: u32,
    colon: u32,
    end: u32,
}

/// A header field as a filter is shown it: the value after the colon and one space,
/// folds as `\n`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ShownHeader<'a> {
    pub(crate) name: Cow<'a, str>,
    pub(crate) value: Cow<'a, str>,
}

/// A whole message, held.
#[derive(Debug)]
pub(crate) struct Held {
    spool: Spool,
    /// The header fields' bytes, as they came (the spool's first bytes).
    head: Vec<u8>,
    fields: Vec<Field>,
    /// Where the body starts in the spool: after the empty line that ends the header
    /// fields, if there is one (`head.len()..body_start`).
    body_start: u64,
}

impl Held {
    /// Reads the header fields of a complete message (ending with the final dot line);
    /// refused past `bounds`.
    pub(crate) fn new(spool: Spool, bounds: HeaderBounds) -> Result<Held, HoldError> {
        // Enough for fields of `bounds.bytes` and the empty line after them.
        let mut head = vec![0u8; spool.len().min(bounds.bytes as u64 + 2) as usize];
        let mut got = 0;
        while got < head.len() {
            let n = spool.read_at(got as u64, &mut head[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        head.truncate(got);
        let whole = got as u64 == spool.len();
        let (fields, fields_end, body_start) = parse_headers(&head, whole, bounds)?;
        head.truncate(fields_end);
        head.shrink_to_fit();
        Ok(Held { spool, head, fields, body_start: body_start as u64 })
    }

    /// The header fields, as a filter is shown them.
    pub(crate) fn headers(&self) -> impl Iterator<Item = ShownHeader<'_>> {
        self.fields.iter().map(|f| ShownHeader { name: String::from_utf8_lossy(self.name(f)), value: self.value(f) })
    }

    /// A field's name, without a stuffed dot and the blanks before its colon.
    fn name(&self, f: &Field) -> &[u8] {
        let name = &self.head[f.start as usize..f.colon as usize];
        name.strip_prefix(b".").unwrap_or(name).trim_ascii_end()
    }

    /// A field's value after its colon and one space, its folds as `\n`.
    fn value(&self, f: &Field) -> Cow<'_, str> {
        let mut lines = self.head[f.colon as usize + 1..f.end as usize].split_inclusive(|b| *b == b'\n');
        let first = without_line_end(lines.next().unwrap_or_default());
        let first = first.strip_prefix(b" ").unwrap_or(first);
        let mut value = String::from_utf8_lossy(first);
        for line in lines {
            let line = without_line_end(line);
            let value = value.to_mut();
            value.push('\n');
            value.push_str(&String::from_utf8_lossy(line.strip_prefix(b".").unwrap_or(line)));
        }
        value
    }

    pub(crate) fn size(&self) -> u64 {
        self.spool.len()
    }

    pub(crate) fn on_disk(&self) -> bool {
        self.spool.on_disk()
    }

    /// The body as filters see it (dot-stuffing undone, without the final dot), in
    /// chunks of at most [`CHUNK`] bytes.
    pub(crate) fn body(&self) -> BodyReader<'_> {
        BodyReader { held: self, offset: self.body_start, line_start: true, end: self.spool.len().saturating_sub(3) }
    }

    /// The message as it goes to the backend, `edits` applied: parts to send in order.
    pub(crate) fn render<'a>(&'a self, edits: &'a Edits) -> Vec<Part<'a>> {
        let mut parts = Parts::default();
        let fields_end = self.head.len() as u64;
        if edits.headers.is_empty() {
            parts.spool(&self.spool, 0, fields_end);
        } else {
            for entry in self.edited_headers(&edits.headers) {
                match entry {
                    Entry::Came(i) => {
                        let f = &self.fields[i as usize];
                        parts.spool(&self.spool, f.start as u64, f.end as u64);
                    }
                    Entry::New { name, value } => parts.bytes(&header_line(name, value)),
                }
            }
        }
        match &edits.body {
            Some(body) => {
                // The empty line as it came, or one where there was none.
                if self.body_start > fields_end {
                    parts.spool(&self.spool, fields_end, self.body_start);
                } else {
                    parts.bytes(b"\r\n");
                }
                parts.spool(&body.spool, 0, body.spool.len());
                parts.bytes(body.stuffer.end());
                parts.bytes(b".\r\n");
            }
            None => parts.spool(&self.spool, fields_end, self.spool.len()),
        }
        parts.0
    }

    /// The header fields after `edits`, as sendmail and Postfix apply them.
    fn edited_headers<'a>(&'a self, edits: &'a [HeaderEdit]) -> Vec<Entry<'a>> {
        let mut list: Vec<Entry<'a>> = (0..self.fields.len() as u32).map(Entry::Came).collect();
        for edit in edits {
            match edit {
                HeaderEdit::Add { name, value } => list.push(Entry::New { name: name.as_bytes(), value }),
                HeaderEdit::Insert { index, name, value } => {
                    // As behind Postfix, whose own Received: (which filters never see)
                    // is field 0: index 1 is the top of the fields that came.
                    let at = (*index as usize).saturating_sub(1).min(list.len());
                    list.insert(at, Entry::New { name: name.as_bytes(), value });
                }
                HeaderEdit::Change { index, name, value } => {
                    // The index-th field of that name (1-based; 0 is taken as 1).
                    let position = list
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| self.entry_name(e).eq_ignore_ascii_case(name.as_bytes()))
                        .nth((*index).max(1) as usize - 1)
                        .map(|(i, _)| i);
                    match (position, value.is_empty()) {
                        (Some(i), true) => {
                            list.remove(i);
                        }
                        (Some(i), false) => list[i] = Entry::New { name: self.entry_name(&list[i]), value },
                        (None, false) => list.push(Entry::New { name: name.as_bytes(), value }),
                        (None, true) => {}
                    }
                }
            }
        }
        list
    }

    fn entry_name<'a>(&'a self, entry: &Entry<'a>) -> &'a [u8] {
        match entry {
            Entry::Came(i) => self.name(&self.fields[*i as usize]),
            Entry::New { name, .. } => name,
        }
    }
}

/// A field of the header section after the filters' changes: one that came (its
/// index), or one a filter wrote.
enum Entry<'a> {
    Came(u32),
    New { name: &'a [u8], value: &'a str },
}

/// A header field a filter wrote, in DATA's wire form: folds it wrote as `\n` (or
/// `\r\n`) go out as CRLF.
fn header_line(name: &[u8], value: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(name.len() + value.len() + 8);
    if name.first() == Some(&b'.') {
        line.push(b'.');
    }
    line.extend_from_slice(name);
    line.extend_from_slice(b": ");
    line.extend_from_slice(value.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes());
    line.extend_from_slice(b"\r\n");
    line
}

/// A line without its CRLF (or bare LF).
fn without_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n")).unwrap_or(line)
}

/// A piece of the message for the backend, in DATA's wire form.
#[derive(Debug)]
pub(crate) enum Part<'a> {
    Bytes(Vec<u8>),
    /// Bytes `from..to` of a spool: the message as it came, or a new body.
    Spool {
        spool: &'a Spool,
        from: u64,
        to: u64,
    },
}

/// Parts in the making: neighbouring pieces are joined, so that an edited header
/// section goes out in a few writes, not one per field.
#[derive(Default)]
struct Parts<'a>(Vec<Part<'a>>);

impl<'a> Parts<'a> {
    fn spool(&mut self, spool: &'a Spool, from: u64, to: u64) {
        if from >= to {
            return;
        }
        match self.0.last_mut() {
            Some(Part::Spool { spool: last, to: end, .. }) if std::ptr::eq(*last, spool) && *end == from => *end = to,
            _ => self.0.push(Part::Spool { spool, from, to }),
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some(Part::Bytes(last)) => last.extend_from_slice(bytes),
            _ => self.0.push(Part::Bytes(bytes.to_vec())),
        }
    }
}

pub(crate) struct BodyReader<'a> {
    held: &'a Held,
    offset: u64,
    line_start: bool,
    end: u64,
}

impl BodyReader<'_> {
    /// The next chunk into `out` (cleared first); false at the end.
    pub(crate) fn next_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        let mut buf = vec![0u8; CHUNK];
        while out.len() < CHUNK && self.offset < self.end {
            let want = (CHUNK - out.len()).min((self.end - self.offset) as usize);
            let n = self.held.spool.read_at(self.offset, &mut buf[..want])?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            for &b in &buf[..n] {
                if self.line_start && b == b'.' {
                    self.line_start = false;
                    continue;
                }
                self.line_start = b == b'\n';
                out.push(b);
            }
        }
        Ok(!out.is_empty())
    }
}

/// The header fields at the start of a message (wire form; `whole` when `head` is the
/// whole message, not its first bytes): the fields, where they end, and where the
/// body starts (after the empty line, if any). Refused past `bounds`.
fn parse_headers(head: &[u8], whole: bool, bounds: HeaderBounds) -> Result<(Vec<Field>, usize, usize), HoldError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < head.len() {
        let (line, complete) = match memchr::memchr(b'\n', &head[pos..]) {
            Some(eol) => (&head[pos..pos + eol + 1], true),
            None => (&head[pos..], whole),
        };
        let content = without_line_end(line);
        if content.is_empty() && complete {
            return Ok((fields, pos, pos + line.len()));
        }
        let unstuffed = content.strip_prefix(b".").unwrap_or(content);
        let folded = matches!(unstuffed.first(), Some(b' ' | b'\t'));
        let colon = if folded { None } else { memchr::memchr(b':', unstuffed) };
        if folded && fields.is_empty() || !folded && colon.is_none() {
            // Not a header field (or the final dot): the body starts here, without an
            // empty line.
            return Ok((fields, pos, pos));
        }
        if !complete || pos + line.len() > bounds.bytes {
            // A field going on past the bytes read, or past the bound.
            return Err(HoldError::HeaderTooBig(bounds.bytes));
        }
        let end = (pos + line.len()) as u32;
        match colon {
            // A fold: part of the field before it.
            None => {
                if let Some(last) = fields.last_mut() {
                    last.end = end;
                }
            }
            Some(_) if fields.len() == bounds.count => return Err(HoldError::TooManyHeaders(bounds.count)),
            Some(colon) => {
                let colon = pos + (content.len() - unstuffed.len()) + colon;
                fields.push(Field { start: pos as u32, colon: colon as u32, end });
            }
        }
        pos += line.len();
    }
    Ok((fields, pos, pos))
}

/// Dot-stuffs a new body as a filter sends it, chunk by chunk. Every line end becomes
/// CRLF, bare LF and bare CR alike (a bare CR before a dot is what SMTP smuggling uses
/// to end a message early at a lenient backend); a last line without one gets one.
#[derive(Debug, Default)]
struct Stuffer {
    /// Inside a line (a dot now is not at its start).
    mid_line: bool,
    /// The last byte was a CR: an LF now is part of the same line end.
    after_cr: bool,
}

impl Stuffer {
    fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < chunk.len() {
            if std::mem::take(&mut self.after_cr) && chunk[i] == b'\n' {
                i += 1;
                continue;
            }
            if !self.mid_line && chunk[i] == b'.' {
                out.push(b'.');
            }
            let run = memchr::memchr2(b'\r', b'\n', &chunk[i..]).unwrap_or(chunk.len() - i);
            out.extend_from_slice(&chunk[i..i + run]);
            self.mid_line |= run > 0;
            i += run;
            if i < chunk.len() {
                out.extend_from_slice(b"\r\n");
                self.mid_line = false;
                self.after_cr = chunk[i] == b'\r';
                i += 1;
            }
        }
    }

    /// What ends the body: a line end for a last line without one.
    fn end(&self) -> &'static [u8] {
        if self.mid_line { b"\r\n" } else { b"" }
    }
}

/// Header changes in the order the filters made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderEdit {
    Add { name: String, value: String },
    Insert { index: u32, name: String, value: String },
    Change { index: u32, name: String, value: String },
}

/// What the filters' changes to one message may come to, together: they are held as
/// the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChangeBounds {
    /// Header fields added, inserted or changed, and the bytes of their names and values.
    pub(crate) headers: HeaderBounds,
    /// Bytes of a new body, as a filter sends it.
    pub(crate) body: u64,
    /// Of a new body, bytes kept in memory; the rest goes to an unnamed temporary file.
    pub(crate) held_in_memory: usize,
    /// Recipients added.
    pub(crate) added: usize,
    /// Recipients removed.
    pub(crate) deleted: usize,
}

/// Why a filter's changes are not taken: the filter fails.
#[derive(Debug, Error)]
pub(crate) enum ChangeError {
    #[error("more than {0} header fields added or changed")]
    TooManyHeaders(usize),
    #[error("header fields added or changed over {0} bytes")]
    HeadersTooBig(usize),
    #[error("a new body over {0} bytes")]
    BodyTooBig(u64),
    #[error("more than {0} recipients added or removed")]
    TooManyRecipients(usize),
    #[error("the new body could not be held: {0}")]
    Hold(io::Error),
}

/// A new body, in DATA's wire form but for the end of its last line and the final dot.
#[derive(Debug)]
struct NewBody {
    spool: Spool,
    stuffer: Stuffer,
    /// Bytes as the filter sent them.
    size: u64,
}

/// Every change the filters asked for at end of message.
#[derive(Debug)]
pub(crate) struct Edits {
    pub(crate) headers: Vec<HeaderEdit>,
    /// A new body (the last filter to replace it wins).
    body: Option<NewBody>,
    pub(crate) new_from: Option<(String, Option<String>)>,
    pub(crate) added: Vec<(String, Option<String>)>,
    pub(crate) deleted: Vec<String>,
    pub(crate) quarantine: Option<String>,
    bounds: ChangeBounds,
    /// Bytes of the names and values in `headers`.
    header_bytes: usize,
}

impl Edits {
    pub(crate) fn new(bounds: ChangeBounds) -> Edits {
        Edits {
            headers: Vec::new(),
            body: None,
            new_from: None,
            added: Vec::new(),
            deleted: Vec::new(),
            quarantine: None,
            bounds,
            header_bytes: 0,
        }
    }

    /// None yet, for the next filter: within what the bounds have left, to be
    /// [`Edits::append`]ed if that filter answers (a filter that fails halfway through
    /// its changes leaves none of them).
    pub(crate) fn next(&self) -> Edits {
        let headers = HeaderBounds {
            count: self.bounds.headers.count.saturating_sub(self.headers.len()),
            bytes: self.bounds.headers.bytes.saturating_sub(self.header_bytes),
        };
        let added = self.bounds.added.saturating_sub(self.added.len());
        let deleted = self.bounds.deleted.saturating_sub(self.deleted.len());
        Edits::new(ChangeBounds { headers, added, deleted, ..self.bounds })
    }

    /// Takes the changes of the filter after those already here.
    pub(crate) fn append(&mut self, later: Edits) {
        self.headers.extend(later.headers);
        self.header_bytes += later.header_bytes;
        if later.body.is_some() {
            self.body = later.body;
        }
        self.new_from = later.new_from.or(self.new_from.take());
        self.added.extend(later.added);
        self.deleted.extend(later.deleted);
        self.quarantine = later.quarantine.or(self.quarantine.take());
    }

    /// Takes one of the filter's modifications, within the bounds.
    pub(crate) fn take(&mut self, m: Modification) -> Result<(), ChangeError> {
        match m {
            Modification::AddHeader { name, value } => self.header(HeaderEdit::Add { name, value }),
            Modification::InsertHeader { index, name, value } => self.header(HeaderEdit::Insert { index, name, value }),
            Modification::ChangeHeader { index, name, value } => self.header(HeaderEdit::Change { index, name, value }),
            Modification::ReplaceBody(chunk) => self.body(&chunk),
            Modification::AddRecipient { address, params } => {
                within(self.added.len(), self.bounds.added)?;
                self.added.push((address, params));
                Ok(())
            }
            Modification::DeleteRecipient(address) => {
                within(self.deleted.len(), self.bounds.deleted)?;
                self.deleted.push(address);
                Ok(())
            }
            Modification::ChangeFrom { address, params } => {
                self.new_from = Some((address, params));
                Ok(())
            }
            Modification::Quarantine(reason) => {
                self.quarantine = Some(reason);
                Ok(())
            }
        }
    }

    fn header(&mut self, edit: HeaderEdit) -> Result<(), ChangeError> {
        let (HeaderEdit::Add { name, value }
        | HeaderEdit::Insert { name, value, .. }
        | HeaderEdit::Change { name, value, .. }) = &edit;
        let bounds = self.bounds.headers;
        if self.headers.len() == bounds.count {
            return Err(ChangeError::TooManyHeaders(bounds.count));
        }
        self.header_bytes += name.len() + value.len();
        if self.header_bytes > bounds.bytes {
            return Err(ChangeError::HeadersTooBig(bounds.bytes));
        }
        self.headers.push(edit);
        Ok(())
    }

    /// A chunk of the filter's new body (its chunks add up).
    fn body(&mut self, chunk: &[u8]) -> Result<(), ChangeError> {
        let (limit, in_memory) = (self.bounds.body, self.bounds.held_in_memory);
        let body = self.body.get_or_insert_with(|| NewBody {
            spool: Spool::new(in_memory),
            stuffer: Stuffer::default(),
            size: 0,
        });
        body.size += chunk.len() as u64;
        if body.size > limit {
            return Err(ChangeError::BodyTooBig(limit));
        }
        let mut stuffed = Vec::with_capacity(chunk.len() + chunk.len() / 64 + 2);
        body.stuffer.stuff(chunk, &mut stuffed);
        body.spool.write(&stuffed).map_err(ChangeError::Hold)
    }

    /// Whether the envelope changed (the backend transaction must be made again).
    pub(crate) fn envelope_changed(&self) -> bool {
        self.new_from.is_some() || !self.added.is_empty() || !self.deleted.is_empty()
    }

    /// Whether a new body went to a temporary file.
    pub(crate) fn body_on_disk(&self) -> bool {
        self.body.as_ref().is_some_and(|b| b.spool.on_disk())
    }
}

/// One more recipient added or removed, after `already`, within `bound`.
fn within(already: usize, bound: usize) -> Result<(), ChangeError> {
    if already >= bound {
        return Err(ChangeError::TooManyRecipients(bound));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Subject: hi\r\nX-Long: a\r\n b\r\nTo: u@example.com\r\n\r\nbody\r\n..dot line\r\n.\r\n";
    const BOUNDS: HeaderBounds = HeaderBounds { count: 1000, bytes: 256 * 1024 };
    const CHANGES: ChangeBounds =
        ChangeBounds { headers: BOUNDS, body: 50_000_000, held_in_memory: 1 << 20, added: 100, deleted: 100 };

    fn spool(bytes: &[u8], limit: usize) -> Spool {
        let mut spool = Spool::new(limit);
        for piece in bytes.chunks(7) {
            spool.write(piece).unwrap();
        }
        spool
    }

    fn held(bytes: &[u8], limit: usize) -> Held {
        Held::new(spool(bytes, limit), BOUNDS).unwrap()
    }

    fn edits(changes: impl IntoIterator<Item = Modification>) -> Edits {
        let mut edits = Edits::new(CHANGES);
        for m in changes {
            edits.take(m).unwrap();
        }
        edits
    }

    fn rendered(h: &Held, edits: &Edits) -> Vec<u8> {
        let mut out = Vec::new();
        for part in h.render(edits) {
            match part {
                Part::Bytes(b) => out.extend(b),
                Part::Spool { spool, from, to } => {
                    let mut buf = vec![0u8; 5];
                    let mut at = from;
                    loop {
                        let n = spool.read_between(at, to, &mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        out.extend_from_slice(&buf[..n]);
                        at += n as u64;
                    }
                }
            }
        }
        out
    }

    fn body(h: &Held) -> Vec<u8> {
        let (mut all, mut chunk, mut reader) = (Vec::new(), Vec::new(), h.body());
        while reader.next_chunk(&mut chunk).unwrap() {
            all.extend_from_slice(&chunk);
        }
        all
    }

    fn stuff(body: &[u8]) -> Vec<u8> {
        let (mut stuffer, mut out) = (Stuffer::default(), Vec::new());
        stuffer.stuff(body, &mut out);
        out.extend_from_slice(stuffer.end());
        out
    }

    #[test]
    fn headers_and_body_are_read_in_memory_and_on_disk() {
        for limit in [1 << 20, 10] {
            let h = held(MESSAGE, limit);
            assert_eq!(h.on_disk(), limit == 10);
            let shown: Vec<(String, String)> =
                h.headers().map(|h| (h.name.into_owned(), h.value.into_owned())).collect();
            let expected = [("Subject", "hi"), ("X-Long", "a\n b"), ("To", "u@example.com")];
            assert_eq!(shown, expected.map(|(n, v)| (n.to_string(), v.to_string())));
            assert_eq!(body(&h), b"body\r\n.dot line\r\n");
            assert_eq!(rendered(&h, &Edits::new(CHANGES)), MESSAGE, "unchanged: byte for byte");
        }
    }

    #[test]
    fn a_field_costs_offsets_not_copies() {
        assert_eq!(std::mem::size_of::<Field>(), 12);
        let h = held(b"..Dotted : v\r\n.\tfolded\r\nNext:x\r\n\r\nb\r\n.\r\n", 1 << 20);
        let shown: Vec<ShownHeader> = h.headers().collect();
        assert_eq!(shown[0], ShownHeader { name: ".Dotted".into(), value: "v\n\tfolded".into() });
        assert_eq!(shown[1], ShownHeader { name: "Next".into(), value: "x".into() });
        assert!(matches!(shown[1].value, Cow::Borrowed(_)), "a one-line value is shown without a copy");
    }

    #[test]
    fn header_sections_past_their_bounds_are_refused() {
        let refused = |message: &[u8], bounds: HeaderBounds| Held::new(spool(message, 1 << 20), bounds).err();
        // 250,000 fields `a:` make 1 MB: past the count.
        let flood = [&b"a:\r\n".repeat(250_000)[..], b"\r\nbody\r\n.\r\n"].concat();
        assert!(matches!(refused(&flood, BOUNDS), Some(HoldError::TooManyHeaders(1000))));
        // The bounds themselves pass; one more field or byte does not.
        let ten = [&b"a:\r\n".repeat(10)[..], b"\r\nbody\r\n.\r\n"].concat();
        assert!(refused(&ten, HeaderBounds { count: 10, bytes: 40 }).is_none());
        assert!(matches!(refused(&ten, HeaderBounds { count: 9, bytes: 40 }), Some(HoldError::TooManyHeaders(9))));
        assert!(matches!(refused(&ten, HeaderBounds { count: 10, bytes: 39 }), Some(HoldError::HeaderTooBig(39))));
        // A fold counts toward the field's bytes; a field cut by the bytes read is too big.
        let folded = b"X: a\r\n b\r\n\r\nbody\r\n.\r\n";
        assert!(refused(folded, HeaderBounds { count: 1, bytes: 10 }).is_none());
        assert!(matches!(refused(folded, HeaderBounds { count: 1, bytes: 9 }), Some(HoldError::HeaderTooBig(9))));
        let long = [b"X: ", &b"v".repeat(100)[..], b"\r\n\r\n.\r\n"].concat();
        assert!(matches!(refused(&long, HeaderBounds { count: 5, bytes: 50 }), Some(HoldError::HeaderTooBig(50))));
        // A fold with no field before it starts the body.
        let h = held(b" x: y\r\n.\r\n", 1 << 20);
        assert_eq!((h.headers().count(), body(&h)), (0, b" x: y\r\n".to_vec()));
        // A long first body line (no empty line before it) is no header field.
        let body_first = [b"X: v\r\n", &b"w".repeat(100)[..], b"\r\n.\r\n"].concat();
        let h = Held::new(spool(&body_first, 1 << 20), HeaderBounds { count: 5, bytes: 20 }).unwrap();
        assert_eq!(h.headers().count(), 1);
        assert_eq!(rendered(&h, &Edits::new(CHANGES)), body_first);
    }

    #[test]
    fn header_edits_follow_sendmail() {
        let h = held(MESSAGE, 1 << 20);
        let edits = edits([
            Modification::AddHeader { name: "X-Virus-Scanned".into(), value: "clean".into() },
            Modification::InsertHeader { index: 0, name: "DKIM-Signature".into(), value: "v=1;\n\tb=abc".into() },
            Modification::ChangeHeader { index: 1, name: "subject".into(), value: "[spam] hi".into() },
            Modification::ChangeHeader { index: 1, name: "X-Long".into(), value: String::new() },
            Modification::ChangeHeader { index: 2, name: "To".into(), value: String::new() },
            Modification::ChangeHeader { index: 1, name: "X-Virus-Scanned".into(), value: "still clean".into() },
        ]);
        let out = String::from_utf8(rendered(&h, &edits)).unwrap();
        assert_eq!(
            out,
            "DKIM-Signature: v=1;\r\n\tb=abc\r\nSubject: [spam] hi\r\nTo: u@example.com\r\n\
             X-Virus-Scanned: still clean\r\n\r\nbody\r\n..dot line\r\n.\r\n"
        );
        // Fields nobody changed go out from the held message, in as few parts as can be.
        let added = edits_added_at_end(&h);
        assert_eq!(added.len(), 3, "{added:?}");
    }

    /// Behind Postfix, field 0 is its own Received: (which filters never see): an
    /// insert at index 1 lands at the top, as rspamd and opendkim expect.
    #[test]
    fn an_insert_counts_as_behind_postfix() {
        let h = held(b"From: a@example.org\r\nTo: b@example.com\r\n\r\nbody\r\n.\r\n", 1 << 20);
        let insert = |index| edits([Modification::InsertHeader { index, name: "X-Spam".into(), value: "no".into() }]);
        let top = "X-Spam: no\r\nFrom: a@example.org\r\nTo: b@example.com\r\n\r\nbody\r\n.\r\n";
        assert_eq!(String::from_utf8(rendered(&h, &insert(1))).unwrap(), top);
        assert_eq!(String::from_utf8(rendered(&h, &insert(0))).unwrap(), top);
        let second = "From: a@example.org\r\nX-Spam: no\r\nTo: b@example.com\r\n\r\nbody\r\n.\r\n";
        assert_eq!(String::from_utf8(rendered(&h, &insert(2))).unwrap(), second);
    }

    fn edits_added_at_end(h: &Held) -> Vec<String> {
        let edits = edits([Modification::AddHeader { name: "X-A".into(), value: "1".into() }]);
        h.render(&edits)
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                Part::Spool { from, to, .. } => format!("{from}..{to}"),
            })
            .collect()
    }

    #[test]
    fn the_filters_header_changes_are_bounded() {
        let bounds = ChangeBounds { headers: HeaderBounds { count: 3, bytes: 20 }, ..CHANGES };
        let add = |value: &str| Modification::AddHeader { name: "X-A".into(), value: value.into() };
        let mut edits = Edits::new(bounds);
        for _ in 0..3 {
            edits.take(add("1")).unwrap();
        }
        assert!(matches!(edits.take(add("1")), Err(ChangeError::TooManyHeaders(3))));
        let mut edits = Edits::new(bounds);
        edits.take(add("0123456789")).unwrap();
        assert!(matches!(edits.take(add("0123456789")), Err(ChangeError::HeadersTooBig(20))));
        // The bounds hold for all the filters together.
        let mut first = Edits::new(bounds);
        first.take(add("1")).unwrap();
        first.take(add("2")).unwrap();
        let mut second = first.next();
        second.take(add("3")).unwrap();
        assert!(matches!(second.take(add("4")), Err(ChangeError::TooManyHeaders(1))));
        let mut recipients = Edits::new(ChangeBounds { added: 1, ..CHANGES });
        recipients.take(Modification::AddRecipient { address: "<a@b>".into(), params: None }).unwrap();
        let more = Modification::AddRecipient { address: "<c@d>".into(), params: None };
        assert!(matches!(recipients.take(more), Err(ChangeError::TooManyRecipients(1))));
    }

    #[test]
    fn a_failed_filters_changes_are_not_taken() {
        let h = held(MESSAGE, 1 << 20);
        let mut all = edits([Modification::AddHeader { name: "X-First".into(), value: "1".into() }]);
        let mut failed = all.next();
        failed.take(Modification::AddHeader { name: "X-Failed".into(), value: "2".into() }).unwrap();
        failed.take(Modification::ReplaceBody(b"half a body".to_vec())).unwrap();
        drop(failed);
        let mut answered = all.next();
        answered.take(Modification::ChangeFrom { address: "<x@y>".into(), params: None }).unwrap();
        all.append(answered);
        let out = String::from_utf8(rendered(&h, &all)).unwrap();
        assert!(out.contains("X-First: 1") && !out.contains("X-Failed") && out.contains("body\r\n"), "{out}");
        assert_eq!(all.new_from, Some(("<x@y>".to_string(), None)));
    }

    #[test]
    fn every_line_end_of_a_new_body_becomes_crlf() {
        assert_eq!(stuff(b"a\r.\r\nb\n.c\rd"), b"a\r\n..\r\nb\r\n..c\r\nd\r\n".to_vec());
        // However the filter cut its chunks.
        let body = b"a\r\n.\r\r\n..x\n\n.";
        for cut in 0..=body.len() {
            let (mut stuffer, mut out) = (Stuffer::default(), Vec::new());
            stuffer.stuff(&body[..cut], &mut out);
            stuffer.stuff(&body[cut..], &mut out);
            out.extend_from_slice(stuffer.end());
            assert_eq!(out, stuff(body), "cut at {cut}");
        }
        assert_eq!(stuff(body), b"a\r\n..\r\n\r\n...x\r\n\r\n..\r\n".to_vec());
    }

    #[test]
    fn a_new_body_is_stuffed_and_ended() {
        let h = held(MESSAGE, 1 << 20);
        let edits =
            edits([Modification::ReplaceBody(b"new\n.line".to_vec()), Modification::ReplaceBody(b" two".to_vec())]);
        let out = rendered(&h, &edits);
        assert_eq!(
            out,
            b"Subject: hi\r\nX-Long: a\r\n b\r\nTo: u@example.com\r\n\r\nnew\r\n..line two\r\n.\r\n".to_vec()
        );
        // Headers only, no body and no empty line.
        let bare = held(b"Subject: x\r\n.\r\n", 1 << 20);
        assert_eq!(bare.headers().count(), 1);
        assert_eq!(body(&bare), b"");
        assert_eq!(rendered(&bare, &edits), b"Subject: x\r\n\r\nnew\r\n..line two\r\n.\r\n".to_vec());
    }

    #[test]
    fn a_new_body_is_held_like_a_message() {
        let h = held(MESSAGE, 1 << 20);
        let chunk = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n".repeat(1024);
        let mut edits = Edits::new(ChangeBounds { held_in_memory: 100_000, body: 150_000, ..CHANGES });
        edits.take(Modification::ReplaceBody(chunk.clone())).unwrap();
        assert!(!edits.body_on_disk(), "in memory up to held_in_memory");
        edits.take(Modification::ReplaceBody(chunk.clone())).unwrap();
        assert!(edits.body_on_disk(), "then in a temporary file");
        let out = rendered(&h, &edits);
        let expected =
            [&b"Subject: hi\r\nX-Long: a\r\n b\r\nTo: u@example.com\r\n\r\n"[..], &chunk, &chunk, b".\r\n"].concat();
        assert!(out == expected, "the new body, whole");
        assert!(matches!(edits.take(Modification::ReplaceBody(chunk)), Err(ChangeError::BodyTooBig(150_000))));
    }
}
