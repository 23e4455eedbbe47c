//! A message held for content filters: kept as it came (DATA's wire form, dot-stuffed,
//! with the final dot) in memory up to a bound and in an unnamed temporary file
//! beyond it, so a large message costs bounded memory and nothing of it outlives the
//! session, refused, abandoned or crashed. Its header fields are read once; the
//! filters' changes to headers and body are applied when it is passed on, reusing the
//! bytes of every part nobody changed.

use super::protocol::{CHUNK, Modification};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The message bytes: memory, then a temporary file.
#[derive(Debug)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    /// Bytes kept in memory at most.
    limit: usize,
}

impl Spool {
    pub fn new(limit: usize) -> Spool {
        Spool { memory: Vec::new(), file: None, len: 0, limit }
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
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

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the message went to a temporary file.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Reads `buf.len()` bytes at most from `offset`; 0 at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
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

/// One header field as it came: its name, the value a filter is shown (after the
/// colon and one space, folds as `\n`), and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
    raw: Vec<u8>,
}

impl Header {
    fn new(name: &str, value: &str) -> Header {
        // Folds a filter wrote as "\n" (or "\r\n") go out as CRLF.
        let wire = value.replace("\r\n", "\n").replace('\n', "\r\n");
        let mut raw = format!("{name}: {wire}\r\n").into_bytes();
        if raw.first() == Some(&b'.') {
            raw.insert(0, b'.');
        }
        Header { name: name.to_string(), value: value.to_string(), raw }
    }
}

/// Header sections larger than this are not read as headers beyond it (the rest is
/// passed on as it came, as body).
const MAX_HEADER_SECTION: u64 = 1024 * 1024;

/// A whole message, held.
#[derive(Debug)]
pub struct Held {
    spool: Spool,
    headers: Vec<Header>,
    /// Where the body starts in the spool (after the empty line, if any).
    body_start: u64,
    /// Whether an empty line separates headers and body.
    separator: bool,
}

impl Held {
    /// Reads the header fields of a complete message (ending with the final dot line).
    pub fn new(spool: Spool) -> io::Result<Held> {
        let mut head = vec![0u8; spool.len().min(MAX_HEADER_SECTION) as usize];
        let mut got = 0;
        while got < head.len() {
            let n = spool.read_at(got as u64, &mut head[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        head.truncate(got);
        let (headers, body_start, separator) = parse_headers(&head);
        Ok(Held { spool, headers, body_start, separator })
    }

    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    pub fn size(&self) -> u64 {
        self.spool.len()
    }

    pub fn on_disk(&self) -> bool {
        self.spool.on_disk()
    }

    /// The body as filters see it (dot-stuffing undone, without the final dot), in
    /// chunks of at most [`CHUNK`] bytes.
    pub fn body(&self) -> BodyReader<'_> {
        BodyReader { held: self, offset: self.body_start, line_start: true, end: self.spool.len().saturating_sub(3) }
    }

    /// The message as it goes to the backend, `edits` applied: parts to send in order.
    pub fn render(&self, edits: &Edits) -> Vec<Part> {
        let mut parts = Vec::new();
        let headers_changed = !edits.headers.is_empty();
        if headers_changed {
            let mut block = Vec::new();
            for h in apply_header_edits(&self.headers, &edits.headers) {
                block.extend_from_slice(&h.raw);
            }
            if self.separator || edits.body.is_some() {
                block.extend_from_slice(b"\r\n");
            }
            parts.push(Part::Bytes(block));
        }
        match &edits.body {
            Some(body) => {
                if !headers_changed {
                    // Original headers and separator, as they came.
                    parts.push(Part::Spool { from: 0, to: self.body_start });
                    if !self.separator {
                        parts.push(Part::Bytes(b"\r\n".to_vec()));
                    }
                }
                parts.push(Part::Bytes(stuff(body)));
                parts.push(Part::Bytes(b".\r\n".to_vec()));
            }
            None => {
                let from = if headers_changed { self.body_start } else { 0 };
                parts.push(Part::Spool { from, to: self.spool.len() });
            }
        }
        parts
    }

    /// Reads spool bytes `from..to` into `buf` (at most its length); 0 at the end.
    pub fn read(&self, from: u64, to: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(to.saturating_sub(from) as usize);
        self.spool.read_at(from, &mut buf[..want])
    }
}

/// A piece of the message for the backend, in DATA's wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Bytes(Vec<u8>),
    Spool { from: u64, to: u64 },
}

pub struct BodyReader<'a> {
    held: &'a Held,
    offset: u64,
    line_start: bool,
    end: u64,
}

impl BodyReader<'_> {
    /// The next chunk into `out` (cleared first); false at the end.
    pub fn next_chunk(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
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

/// Header fields from the start of a message (wire form): the fields, where the body
/// starts, and whether an empty line was there.
fn parse_headers(head: &[u8]) -> (Vec<Header>, u64, bool) {
    let mut headers: Vec<Header> = Vec::new();
    let mut pos = 0;
    while pos < head.len() {
        let Some(eol) = memchr::memchr(b'\n', &head[pos..]) else { break };
        let line = &head[pos..pos + eol + 1];
        let content = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n")).unwrap_or(line);
        if content.is_empty() {
            return (headers, (pos + line.len()) as u64, true);
        }
        if content == b"." {
            // The final dot: no body at all.
            return (headers, pos as u64, false);
        }
        let unstuffed = content.strip_prefix(b".").unwrap_or(content);
        if matches!(unstuffed.first(), Some(b' ' | b'\t')) {
            // A continuation line: part of the field before it.
            let Some(last) = headers.last_mut() else { return (headers, pos as u64, false) };
            last.value.push('\n');
            last.value.push_str(&String::from_utf8_lossy(unstuffed));
            last.raw.extend_from_slice(line);
        } else {
            let Some(colon) = memchr::memchr(b':', unstuffed) else {
                // Not a header field: the body starts here, without a separator.
                return (headers, pos as u64, false);
            };
            let name = String::from_utf8_lossy(&unstuffed[..colon]).trim_end().to_string();
            let value = &unstuffed[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            headers.push(Header { name, value: String::from_utf8_lossy(value).into_owned(), raw: line.to_vec() });
        }
        pos += line.len();
    }
    (headers, pos as u64, false)
}

/// Dot-stuffs a body a filter gave. Every line end becomes CRLF, bare LF and bare CR
/// alike (a bare CR before a dot is what SMTP smuggling uses to end a message early
/// at a lenient backend); a last line without one gets one.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 2);
    let mut line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'\r' || b == b'\n' {
            // CRLF, a bare CR or a bare LF: one line end.
            if b == b'\r' && body.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            out.extend_from_slice(b"\r\n");
            line_start = true;
        } else {
            if line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            line_start = false;
        }
        i += 1;
    }
    if !body.is_empty() && !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Header changes in the order the filters made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Add { name: String, value: String },
    Insert { index: u32, name: String, value: String },
    Change { index: u32, name: String, value: String },
}

/// Every change the filters asked for at end of message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    pub headers: Vec<HeaderEdit>,
    /// A new body (the last filter to replace it wins).
    pub body: Option<Vec<u8>>,
    pub new_from: Option<(String, Option<String>)>,
    pub added: Vec<(String, Option<String>)>,
    pub deleted: Vec<String>,
    pub quarantine: Option<String>,
}

impl Edits {
    /// Takes one filter's modification. `replacing` is true while that filter is in
    /// the middle of sending a new body (its chunks add up).
    pub fn take(&mut self, m: Modification, replacing: &mut bool) {
        match m {
            Modification::AddHeader { name, value } => self.headers.push(HeaderEdit::Add { name, value }),
            Modification::InsertHeader { index, name, value } => {
                self.headers.push(HeaderEdit::Insert { index, name, value })
            }
            Modification::ChangeHeader { index, name, value } => {
                self.headers.push(HeaderEdit::Change { index, name, value })
            }
            Modification::ReplaceBody(chunk) => {
                if !*replacing {
                    self.body = Some(Vec::new());
                    *replacing = true;
                }
                self.body.get_or_insert_with(Vec::new).extend_from_slice(&chunk);
            }
            Modification::AddRecipient { address, params } => self.added.push((address, params)),
            Modification::DeleteRecipient(address) => self.deleted.push(address),
            Modification::ChangeFrom { address, params } => self.new_from = Some((address, params)),
            Modification::Quarantine(reason) => self.quarantine = Some(reason),
        }
    }

    /// Whether the envelope changed (the backend transaction must be made again).
    pub fn envelope_changed(&self) -> bool {
        self.new_from.is_some() || !self.added.is_empty() || !self.deleted.is_empty()
    }
}

/// The header list after `edits`, as sendmail and Postfix apply them.
fn apply_header_edits(original: &[Header], edits: &[HeaderEdit]) -> Vec<Header> {
    let mut headers = original.to_vec();
    for edit in edits {
        match edit {
            HeaderEdit::Add { name, value } => headers.push(Header::new(name, value)),
            HeaderEdit::Insert { index, name, value } => {
                let at = (*index as usize).min(headers.len());
                headers.insert(at, Header::new(name, value));
            }
            HeaderEdit::Change { index, name, value } => {
                // The index-th field of that name (1-based; 0 is taken as 1).
                let position = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.name.eq_ignore_ascii_case(name))
                    .nth((*index).max(1) as usize - 1)
                    .map(|(i, _)| i);
                match (position, value.is_empty()) {
                    (Some(i), true) => {
                        headers.remove(i);
                    }
                    (Some(i), false) => headers[i] = Header::new(&headers[i].name.clone(), value),
                    (None, false) => headers.push(Header::new(name, value)),
                    (None, true) => {}
                }
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Subject: hi\r\nX-Long: a\r\n b\r\nTo: u@example.com\r\n\r\nbody\r\n..dot line\r\n.\r\n";

    fn held(bytes: &[u8], limit: usize) -> Held {
        let mut spool = Spool::new(limit);
        for piece in bytes.chunks(7) {
            spool.write(piece).unwrap();
        }
        Held::new(spool).unwrap()
    }

    fn rendered(h: &Held, edits: &Edits) -> Vec<u8> {
        let mut out = Vec::new();
        for part in h.render(edits) {
            match part {
                Part::Bytes(b) => out.extend(b),
                Part::Spool { from, to } => {
                    let mut buf = vec![0u8; 5];
                    let mut at = from;
                    loop {
                        let n = h.read(at, to, &mut buf).unwrap();
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

    #[test]
    fn headers_and_body_are_read_in_memory_and_on_disk() {
        for limit in [1 << 20, 10] {
            let h = held(MESSAGE, limit);
            assert_eq!(h.on_disk(), limit == 10);
            let names: Vec<&str> = h.headers().iter().map(|h| h.name.as_str()).collect();
            assert_eq!(names, ["Subject", "X-Long", "To"]);
            assert_eq!(h.headers()[1].value, "a\n b");
            assert_eq!(body(&h), b"body\r\n.dot line\r\n");
            assert_eq!(rendered(&h, &Edits::default()), MESSAGE, "unchanged: byte for byte");
        }
    }

    #[test]
    fn header_edits_follow_sendmail() {
        let h = held(MESSAGE, 1 << 20);
        let mut edits = Edits::default();
        let mut replacing = false;
        for m in [
            Modification::AddHeader { name: "X-Virus-Scanned".into(), value: "clean".into() },
            Modification::InsertHeader { index: 0, name: "DKIM-Signature".into(), value: "v=1;\n\tb=abc".into() },
            Modification::ChangeHeader { index: 1, name: "subject".into(), value: "[spam] hi".into() },
            Modification::ChangeHeader { index: 1, name: "X-Long".into(), value: String::new() },
            Modification::ChangeHeader { index: 2, name: "To".into(), value: String::new() },
        ] {
            edits.take(m, &mut replacing);
        }
        let out = String::from_utf8(rendered(&h, &edits)).unwrap();
        assert_eq!(
            out,
            "DKIM-Signature: v=1;\r\n\tb=abc\r\nSubject: [spam] hi\r\nTo: u@example.com\r\nX-Virus-Scanned: clean\r\n\
             \r\nbody\r\n..dot line\r\n.\r\n"
        );
    }

    #[test]
    fn every_line_end_of_a_new_body_becomes_crlf() {
        assert_eq!(stuff(b"a\r.\r\nb\n.c\rd"), b"a\r\n..\r\nb\r\n..c\r\nd\r\n".to_vec());
    }

    #[test]
    fn a_new_body_is_stuffed_and_ended() {
        let h = held(MESSAGE, 1 << 20);
        let mut edits = Edits::default();
        let mut replacing = false;
        edits.take(Modification::ReplaceBody(b"new\n.line".to_vec()), &mut replacing);
        edits.take(Modification::ReplaceBody(b" two".to_vec()), &mut replacing);
        let out = rendered(&h, &edits);
        assert_eq!(
            out,
            b"Subject: hi\r\nX-Long: a\r\n b\r\nTo: u@example.com\r\n\r\nnew\r\n..line two\r\n.\r\n".to_vec()
        );
        // Headers only, no body and no empty line.
        let bare = held(b"Subject: x\r\n.\r\n", 1 << 20);
        assert_eq!(bare.headers().len(), 1);
        assert_eq!(body(&bare), b"");
        assert_eq!(rendered(&bare, &edits), b"Subject: x\r\n\r\nnew\r\n..line two\r\n.\r\n".to_vec());
    }
}
