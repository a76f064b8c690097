//! A streamed answer read line by line (`tether logs --server`).

use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ApiError;

/// Lines of a body that is still arriving.
pub struct Lines {
    body: Incoming,
    buffer: Vec<u8>,
    url: String,
    path: String,
    done: bool,
}

impl Lines {
    pub(super) fn new(body: Incoming, url: String, path: String) -> Self {
        Self { body, buffer: Vec::new(), url, path, done: false }
    }

    /// The next whole line, without its newline; `None` at the end of the body.
    pub async fn next_line(&mut self) -> Result<Option<String>, ApiError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).take(end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.done {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buffer);
                return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ApiError::Unreachable {
                        url: self.url.clone(),
                        reason: format!("{}: the stream broke off: {e}", self.path),
                    });
                }
                None => self.done = true,
            }
        }
    }
}
