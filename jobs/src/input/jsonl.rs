//! JSONL inputs: OpenAI batch request lines or document lines, read line by line.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{InputError, InputOptions, Item, check_id};
use crate::job::Route;

const CHAT_URL: &str = "/v1/chat/completions";

pub struct JsonlReader {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    name: String,
    options: InputOptions,
    line_no: u64,
    buf: Vec<u8>,
    done: bool,
    items: u64,
}

enum RawLine {
    Line,
    TooLong,
    /// Over the limit, and no line end within [`MAX_SKIP_BYTES`] either.
    Endless,
    Eof,
}

/// How far past the line limit a line is skipped to find its end. An input with no line end
/// at all (a stream of zeros) is then given up on, instead of being read forever.
const MAX_SKIP_BYTES: usize = 1 << 30;

impl JsonlReader {
    pub fn new(
        reader: Box<dyn AsyncRead + Unpin + Send>,
        name: String,
        options: InputOptions,
    ) -> Self {
        Self {
            reader: BufReader::with_capacity(256 * 1024, reader),
            name,
            options,
            line_no: 0,
            buf: Vec::new(),
            done: false,
            items: 0,
        }
    }

    fn location(&self) -> String {
        format!("{}:{}", self.name, self.line_no)
    }

    fn error(&self, custom_id: Option<String>, reason: impl Into<String>) -> InputError {
        InputError {
            location: self.location(),
            line: Some(self.line_no),
            custom_id,
            entry: None,
            reason: reason.into(),
            fatal: false,
        }
    }

    /// Reads one line into `buf` without ever holding more than the line limit.
    async fn read_line(&mut self) -> std::io::Result<RawLine> {
        self.buf.clear();
        let limit = self.options.max_line_bytes;
        let mut too_long = false;
        let mut any = false;
        let mut skipped = 0usize;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if !any {
                    return Ok(RawLine::Eof);
                }
                break;
            }
            any = true;
            let (chunk, found) = match memchr(available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !too_long {
                if self.buf.len() + chunk.len() > limit {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            } else {
                skipped = skipped.saturating_add(chunk.len());
                if skipped > MAX_SKIP_BYTES {
                    return Ok(RawLine::Endless);
                }
            }
            let consumed = found.unwrap_or(available.len());
            self.reader.consume(consumed);
            if found.is_some() {
                break;
            }
        }
        Ok(if too_long {
            RawLine::TooLong
        } else {
            RawLine::Line
        })
    }

    pub async fn next(&mut self) -> Option<Result<Item, InputError>> {
        while !self.done {
            let raw = match self.read_line().await {
                Ok(raw) => raw,
                Err(e) => {
                    self.done = true;
                    return Some(Err(InputError::fatal(
                        self.name.clone(),
                        format!("read failed: {e}"),
                    )));
                }
            };
            match raw {
                RawLine::Eof => {
                    self.done = true;
                    if self.items == 0 {
                        return Some(Err(InputError::fatal(
                            self.name.clone(),
                            "the input is empty (no non-blank lines); give at least one item",
                        )));
                    }
                    return None;
                }
                RawLine::TooLong => {
                    self.line_no += 1;
                    self.items += 1;
                    return Some(Err(self.error(
                        None,
                        format!(
                            "line is longer than the limit of {} bytes; raise input.max_line_bytes",
                            self.options.max_line_bytes
                        ),
                    )));
                }
                RawLine::Endless => {
                    self.done = true;
                    return Some(Err(InputError::fatal(
                        format!("{}:{}", self.name, self.line_no + 1),
                        format!(
                            "line is longer than the limit of {} bytes, and has no end within {} MiB more; the input looks like an endless stream, give a file of JSON lines",
                            self.options.max_line_bytes,
                            MAX_SKIP_BYTES >> 20
                        ),
                    )));
                }
                RawLine::Line => {}
            }
            self.line_no += 1;
            let mut bytes: &[u8] = &self.buf;
            if self.line_no == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.items += 1;
            let text = match std::str::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(self.error(
                        None,
                        format!(
                            "not valid UTF-8 at byte {}; re-encode the file as UTF-8",
                            e.valid_up_to()
                        ),
                    )));
                }
            };
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => return Some(Err(self.error(None, format!("invalid JSON: {e}")))),
            };
            return Some(self.parse_item(value));
        }
        None
    }

    fn parse_item(&self, value: Value) -> Result<Item, InputError> {
        let Value::Object(mut obj) = value else {
            return Err(self.error(None, "each line must be a JSON object"));
        };
        if obj.contains_key("body") || obj.contains_key("custom_id") {
            self.parse_request(obj)
        } else {
            let id = match obj.get("id") {
                Some(Value::String(s)) => match check_id("id", s) {
                    None => s.clone(),
                    Some(reason) => return Err(self.error(None, reason)),
                },
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => return Err(self.error(None, "\"id\" must be a string")),
                None => {
                    return Err(self.error(
                        None,
                        "missing \"custom_id\" (request line) or \"id\" (document line)",
                    ));
                }
            };
            match obj.get("text") {
                Some(Value::String(_)) => {}
                Some(_) => return Err(self.error(Some(id), "\"text\" must be a string")),
                None => return Err(self.error(Some(id), "a document line needs \"text\"")),
            }
            let Some(task) = &self.options.task else {
                return Err(self.error(Some(id), "document lines need a task; pass --task NAME"));
            };
            if !self.options.names.tasks.contains(task) {
                return Err(self.unknown_task(Some(id), task));
            }
            obj.insert("id".into(), Value::String(id.clone()));
            Ok(Item::Document {
                id,
                fields: obj,
                line: Some(self.line_no),
                location: self.location(),
            })
        }
    }

    fn unknown_task(&self, custom_id: Option<String>, task: &str) -> InputError {
        let known: Vec<&str> = self
            .options
            .names
            .tasks
            .iter()
            .map(String::as_str)
            .collect();
        self.error(
            custom_id,
            format!(
                "unknown task {task:?}; configured tasks: {}",
                known.join(", ")
            ),
        )
    }

    fn parse_request(&self, mut obj: Map<String, Value>) -> Result<Item, InputError> {
        let custom_id = match obj.get("custom_id") {
            Some(Value::String(s)) => match check_id("custom_id", s) {
                None => s.clone(),
                Some(reason) => return Err(self.error(None, reason)),
            },
            Some(_) => return Err(self.error(None, "\"custom_id\" must be a string")),
            None => return Err(self.error(None, "missing \"custom_id\"")),
        };
        let cid = || Some(custom_id.clone());
        match obj.get("method") {
            Some(Value::String(m)) if m == "POST" => {}
            None => {}
            Some(other) => {
                return Err(self.error(cid(), format!("\"method\" must be \"POST\", not {other}")));
            }
        }
        match obj.get("url") {
            Some(Value::String(u)) if u == CHAT_URL => {}
            None => {}
            Some(other) => {
                return Err(self.error(
                    cid(),
                    format!("\"url\" must be \"{CHAT_URL}\", not {other}"),
                ));
            }
        }
        let Some(Value::Object(body)) = obj.remove("body") else {
            return Err(self.error(cid(), "missing \"body\" object"));
        };
        match body.get("messages") {
            Some(Value::Array(m)) if !m.is_empty() => {}
            Some(Value::Array(_)) => return Err(self.error(cid(), "\"body.messages\" is empty")),
            _ => return Err(self.error(cid(), "\"body\" needs a \"messages\" array")),
        }
        let route = match body.get("model") {
            None => self.default_route(cid())?,
            Some(Value::String(m)) if m == "auto" => self.default_route(cid())?,
            Some(Value::String(m)) => match m.strip_prefix("task:") {
                Some(task) if self.options.names.tasks.contains(task) => Route::Task {
                    task: task.to_string(),
                },
                Some(task) => return Err(self.unknown_task(cid(), task)),
                None if self.options.names.models.contains(m) => Route::Pinned { model: m.clone() },
                None => {
                    let known: Vec<&str> = self
                        .options
                        .names
                        .models
                        .iter()
                        .map(String::as_str)
                        .collect();
                    return Err(self.error(
                        cid(),
                        format!(
                            "unknown model {m:?}; use \"auto\", \"task:<name>\" or one of: {}",
                            known.join(", ")
                        ),
                    ));
                }
            },
            Some(_) => return Err(self.error(cid(), "\"body.model\" must be a string")),
        };
        Ok(Item::Request {
            custom_id,
            body,
            route,
            line: self.line_no,
            location: self.location(),
        })
    }

    fn default_route(&self, custom_id: Option<String>) -> Result<Route, InputError> {
        match &self.options.task {
            Some(task) if self.options.names.tasks.contains(task) => {
                Ok(Route::Task { task: task.clone() })
            }
            Some(task) => Err(self.unknown_task(custom_id, task)),
            None => Ok(Route::Auto),
        }
    }
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::input::KnownNames;

    fn reader(source: Box<dyn AsyncRead + Unpin + Send>) -> JsonlReader {
        let options = InputOptions {
            max_line_bytes: 1024,
            task: None,
            names: KnownNames::default(),
            only: None,
            follow_symlinks: false,
        };
        JsonlReader::new(source, "stream".into(), options)
    }

    /// A stream with no line end at all (what /dev/zero gives) ends the read with the line
    /// limit's error, after a bounded skip, instead of being read forever.
    #[tokio::test]
    async fn a_stream_without_newlines_ends_with_the_line_limit() {
        let started = std::time::Instant::now();
        let mut r = reader(Box::new(tokio::io::repeat(b'x')));
        let first = tokio::time::timeout(std::time::Duration::from_secs(120), r.next())
            .await
            .expect("the read must end")
            .unwrap()
            .unwrap_err();
        assert!(first.fatal, "{first}");
        assert_eq!(first.location, "stream:1");
        assert!(
            first.reason.contains("longer than the limit of 1024 bytes")
                && first.reason.contains("endless stream"),
            "{first}"
        );
        assert!(r.next().await.is_none());
        eprintln!("gave up after {:.1} s", started.elapsed().as_secs_f64());
    }

    /// A long line that does end is skipped, and the lines after it are still read.
    #[tokio::test]
    async fn a_long_line_that_ends_is_skipped_and_reading_goes_on() {
        let mut body = vec![b'x'; 5000];
        body.extend_from_slice(b"\n{\"custom_id\":\"a\",\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}}\n");
        let mut r = reader(Box::new(std::io::Cursor::new(body)));
        let first = r.next().await.unwrap().unwrap_err();
        assert_eq!(first.location, "stream:1");
        assert!(
            !first.fatal && first.reason.contains("longer than the limit"),
            "{first}"
        );
        let second = r.next().await.unwrap().unwrap();
        assert_eq!(second.custom_id(), "a");
        assert_eq!(second.location(), "stream:2");
        assert!(r.next().await.is_none());
    }
}
