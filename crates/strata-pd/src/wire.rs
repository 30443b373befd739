//! The KV transfer wire format (version 1). Documented for operators and
//! other implementations in `docs/pd.md` ("Wire format"); this module is the code.
//!
//! Every frame is `u32 length (LE) | u8 kind | payload`, where length
//! counts the kind byte and the payload. Frames are bounded: control
//! frames by [`MAX_CONTROL`], block frames by the negotiated block size.
//!
//! A connection starts with a handshake:
//! 1. server -> `Challenge { magic, version, server_nonce }`
//! 2. client -> `Hello { fingerprint, block_size, bytes_per_block,
//!    client_nonce, mac }`, mac = HMAC-SHA256(secret, "strata-pd hello" |
//!    server_nonce | client_nonce | fingerprint | block_size |
//!    bytes_per_block) (all zeros without a secret)
//! 3. server -> `Welcome { mac }` (HMAC of "strata-pd welcome" | client_nonce
//!    | server_nonce) or `Refuse { code, message }`
//!
//! Then requests, one at a time: `Pull { transfer_id, block indices }`
//! answered by one `Block { index, crc32, bytes }` per index and `End`, or
//! by `Error { code, message }`; `Release { transfer_id }` answered by
//! `End`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: &[u8; 8] = b"STRATAPD";
pub const VERSION: u16 = 1;
pub const MAX_CONTROL: usize = 1 << 20;

pub const CHALLENGE: u8 = 1;
pub const HELLO: u8 = 2;
pub const WELCOME: u8 = 3;
pub const REFUSE: u8 = 4;
pub const PULL: u8 = 5;
pub const BLOCK: u8 = 6;
pub const END: u8 = 7;
pub const ERROR: u8 = 8;
pub const RELEASE: u8 = 9;

/// `Refuse` and `Error` codes.
pub const CODE_HANDSHAKE: u8 = 1;
pub const CODE_AUTH: u8 = 2;
pub const CODE_EXPIRED: u8 = 3;
pub const CODE_INVALID: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(len as u32).to_le_bytes());
    head[4] = kind;
    w.write_all(&head).await?;
    for p in parts {
        w.write_all(p).await?;
    }
    Ok(())
}

/// Reads one frame into `buf` (reused); returns its kind.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<u8, WireError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    if len - 1 > max {
        return Err(WireError::TooLarge(len));
    }
    buf.resize(len - 1, 0);
    r.read_exact(buf).await?;
    Ok(head[4])
}

/// A cursor over a frame's payload.
#[derive(Debug)]
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub fn bytes(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("short payload"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    pub fn string(&mut self) -> Result<String, WireError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).map_err(|_| WireError::Malformed("not UTF-8"))
    }
}

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The payload of `Refuse` and `Error`: a code and a message.
pub fn coded(code: u8, message: &str) -> Vec<u8> {
    let mut payload = vec![code];
    put_string(&mut payload, message);
    payload
}

/// What both ends must agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub fingerprint: u64,
    pub block_size: u32,
    pub bytes_per_block: u32,
}

impl Layout {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.bytes_per_block.to_le_bytes());
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self { fingerprint: r.u64()?, block_size: r.u32()?, bytes_per_block: r.u32()? })
    }

    /// Why two layouts cannot exchange blocks, if they cannot.
    pub fn mismatch(&self, other: &Layout) -> Option<String> {
        if self.fingerprint != other.fingerprint {
            return Some(format!(
                "model or KV layout differs (fingerprint {:016x} vs {:016x})",
                self.fingerprint, other.fingerprint
            ));
        }
        if self.block_size != other.block_size || self.bytes_per_block != other.bytes_per_block {
            return Some(format!(
                "block shape differs ({} tokens / {} bytes vs {} / {})",
                self.block_size, self.bytes_per_block, other.block_size, other.bytes_per_block
            ));
        }
        None
    }
}

pub fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // A failure of the OS RNG leaves zeros: the MAC still binds the
    // secret, only replay protection weakens.
    let _ = getrandom::fill(&mut n);
    n
}

/// HMAC-SHA256 over `parts`; all zeros without a secret.
pub fn mac(secret: Option<&str>, parts: &[&[u8]]) -> [u8; 32] {
    let Some(secret) = secret else { return [0u8; 32] };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("invariant: HMAC takes keys of any length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time comparison of two MACs: every byte is compared whatever
/// the earlier ones held (`black_box` keeps the optimiser from turning
/// the fold into an early exit); only the length, public, is compared first.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y))) == 0
}
