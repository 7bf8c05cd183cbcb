//! Framing and field reading of the host command interface.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::PayShieldError;

/// Longest message either side takes (a TR-31 block and a long MAC input fit well within).
pub const MAX_MESSAGE: usize = 16 * 1024;

/// Write one message: 2-byte length, then `message`.
pub async fn write_message<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    let mut frame = Vec::with_capacity(2 + message.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    out.write_all(&frame).await
}

/// Read one message (`None` at a clean end of stream).
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    input: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes"),
        ));
    }
    let mut message = vec![0u8; len];
    input.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// Fields read in order from a message, each failure naming its offset.
#[derive(Debug)]
pub struct Fields<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Fields<'a> {
    /// The fields of `message` (ASCII) from offset `at`.
    pub fn new(message: &'a [u8], at: usize) -> Result<Fields<'a>, PayShieldError> {
        let text = std::str::from_utf8(message)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| PayShieldError::Wire("not ASCII".into()))?;
        if at > text.len() {
            return Err(PayShieldError::Wire(format!(
                "{} bytes, shorter than its header",
                text.len()
            )));
        }
        Ok(Fields { text, at })
    }

    /// The next `n` characters.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a str, PayShieldError> {
        let field = self.text.get(self.at..self.at + n).ok_or_else(|| {
            PayShieldError::Wire(format!(
                "{what}: {n} characters expected at offset {}",
                self.at
            ))
        })?;
        self.at += n;
        Ok(field)
    }

    /// The next `n` hex digits as bytes.
    pub fn hex(&mut self, n: usize, what: &str) -> Result<Vec<u8>, PayShieldError> {
        let at = self.at;
        let field = self.take(n, what)?;
        switchyard_hsm::from_hex(field)
            .map_err(|_| PayShieldError::Wire(format!("{what} at offset {at}: not hexadecimal")))
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a str {
        let rest = self.text.get(self.at..).unwrap_or_default();
        self.at = self.text.len();
        rest
    }
}
