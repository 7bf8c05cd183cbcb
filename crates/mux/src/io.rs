//! What both sides do with a socket: the coalescing writer and the frame reader with
//! deadlines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::error::{MuxError, Side};
use crate::framing::{Frame, FrameCodec};

/// The most frames gathered into one write, and the most bytes: enough to turn a burst into
/// one syscall, small enough that one connection cannot hold a large buffer.
const MAX_FRAMES_PER_WRITE: usize = 256;
const MAX_BYTES_PER_WRITE: usize = 256 * 1024;
/// Room a read has at the least, and what is reserved when there is less. A read that fills
/// its room exactly leaves the socket marked readable, so the next frame costs one more
/// `recvfrom` that finds nothing (perf counted two per transaction with the room a frame
/// left behind); with room to spare a read takes what is there and the socket waits for
/// readiness again. Frames are slices of this buffer: one allocation serves several. No
/// more than the first buffer's capacity, so that a connection which never sends keeps
/// only that (ten thousand idle terminals: 136 MiB with 1 KiB here, 102 MiB with 512 B).
const READ_ROOM: usize = 512;
const READ_RESERVE: usize = 4096;

/// Frames and writes on one side, to show that writes are coalesced.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Frames written.
    pub frames_written: AtomicU64,
    /// `write` calls (one per gathered batch of frames).
    pub write_calls: AtomicU64,
    /// Frames read.
    pub frames_read: AtomicU64,
}

/// A writer that stopped on an error, with the messages of the batch it could not write.
#[derive(Debug)]
pub(crate) struct WriteFailure {
    pub(crate) error: MuxError,
    pub(crate) unwritten: Vec<Bytes>,
}

/// Write every frame that arrives on `rx`: each wake-up takes all frames already queued and
/// sends them with one write (and one TLS flush). Ends when every sender is gone (after
/// writing what they sent) or on the first error, which returns the batch's messages.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    mut out: W,
    mut rx: mpsc::Receiver<Frame>,
    codec: FrameCodec,
    side: Side,
    write_timeout: Duration,
    counters: &IoCounters,
) -> std::result::Result<(), WriteFailure> {
    // Allocated at the first frame, not before: an idle connection costs no write buffer.
    let mut buf = BytesMut::new();
    // The messages of the batch being written, kept (as cheap `Bytes` handles) so that a
    // failed write can say which answers never left.
    let mut batch: Vec<Bytes> = Vec::new();
    let fail = |error: MuxError, batch: &mut Vec<Bytes>| WriteFailure {
        error,
        unwritten: std::mem::take(batch),
    };
    while let Some(first) = rx.recv().await {
        buf.clear();
        batch.clear();
        if let Err(e) = codec.encode_frame(&first, &mut buf) {
            batch.push(first.message);
            return Err(fail(e, &mut batch));
        }
        batch.push(first.message);
        for look in 0..2 {
            while batch.len() < MAX_FRAMES_PER_WRITE && buf.len() < MAX_BYTES_PER_WRITE {
                match rx.try_recv() {
                    Ok(frame) => {
                        let encoded = codec.encode_frame(&frame, &mut buf);
                        batch.push(frame.message);
                        if let Err(e) = encoded {
                            return Err(fail(e, &mut batch));
                        }
                    }
                    Err(_) => break,
                }
            }
            // Woken for one frame, the writer usually finds only that one: the task that
            // queued it woke this one at once. Letting the tasks already runnable go first
            // lets them queue theirs for the same write.
            if look == 0 && batch.len() == 1 {
                tokio::task::yield_now().await;
            } else {
                break;
            }
        }
        let write = async {
            out.write_all(&buf).await?;
            out.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(MuxError::io(side, e), &mut batch)),
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out");
                return Err(fail(MuxError::io(side, e), &mut batch));
            }
        }
        counters.write_calls.fetch_add(1, Ordering::Relaxed);
        counters
            .frames_written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if buf.capacity() > 4 * MAX_BYTES_PER_WRITE {
            buf = BytesMut::new();
        }
    }
    let _ = out.shutdown().await;
    Ok(())
}

/// Why a [`FrameReader`] stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed between frames.
    Eof,
    /// No complete frame within the frame deadline after its first byte (slow sender).
    FrameTimeout,
    /// No byte within the idle timeout.
    Idle,
    /// Unframeable stream or socket error.
    Error(MuxError),
}

/// Reads frames with two deadlines: a frame must be complete within `frame_timeout` of its
/// first byte (a slowloris sender cannot hold a connection by trickling bytes), and a
/// connection with nothing arriving is idle after `idle_timeout`. Many frames may come out
/// of one read.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    input: R,
    codec: FrameCodec,
    buf: BytesMut,
    side: Side,
    partial_since: Option<Instant>,
    last_byte: Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(input: R, codec: FrameCodec, side: Side) -> Self {
        FrameReader {
            input,
            codec,
            // Small to start (most messages are a few hundred bytes); the codec reserves what
            // a longer frame announces. Ten thousand idle terminals stay cheap.
            buf: BytesMut::with_capacity(READ_ROOM),
            side,
            partial_since: None,
            last_byte: Instant::now(),
        }
    }

    /// A frame already complete in the buffer, without reading (for draining).
    pub(crate) fn buffered(&mut self) -> Option<Frame> {
        self.codec.decode(&mut self.buf).ok().flatten()
    }

    /// Restart the idle clock (the connection is busy even though nothing arrives).
    pub(crate) fn touch(&mut self) {
        self.last_byte = Instant::now();
    }

    /// Read and drop what the peer still sends, until it closes, for at most `limit` and
    /// about `max_bytes`. Called once the answers are written and our side is shut: a
    /// socket closed with input unread sends a reset, and a reset makes the kernel drop the
    /// answers not yet sent (the peer's, those not yet read). Returns whether the peer
    /// closed (or broke the connection) within the bounds.
    pub(crate) async fn linger(&mut self, limit: Duration, max_bytes: usize) -> bool {
        let deadline = Instant::now() + limit;
        let mut dropped = 0usize;
        while dropped <= max_bytes {
            self.buf.clear();
            match tokio::time::timeout_at(deadline, self.input.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => dropped += n,
                Err(_) => break,
            }
        }
        false
    }

    /// The next frame. `idle_timeout` of `None` waits for ever between frames.
    pub(crate) async fn next(
        &mut self,
        frame_timeout: Duration,
        idle_timeout: Option<Duration>,
    ) -> std::result::Result<Frame, ReadEnd> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    // What is left belongs to the next frame, which starts now.
                    self.partial_since = (!self.buf.is_empty()).then(Instant::now);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Error(e)),
            }
            if self.buf.is_empty() {
                self.partial_since = None;
            } else if self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            let (deadline, on_timeout) = match (self.partial_since, idle_timeout) {
                (Some(since), _) => (Some(since + frame_timeout), ReadEnd::FrameTimeout),
                (None, Some(idle)) => (Some(self.last_byte + idle), ReadEnd::Idle),
                (None, None) => (None, ReadEnd::Idle),
            };
            if self.buf.capacity() - self.buf.len() < READ_ROOM {
                self.buf.reserve(READ_RESERVE);
            }
            let read = self.input.read_buf(&mut self.buf);
            let n = match deadline {
                Some(d) => match tokio::time::timeout_at(d, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(on_timeout),
                },
                None => read.await,
            };
            match n {
                Ok(0) => {
                    return match self.codec.decode_eof(&mut self.buf) {
                        Ok(Some(frame)) => Ok(frame),
                        Ok(None) => Err(ReadEnd::Eof),
                        Err(e) => Err(ReadEnd::Error(e)),
                    }
                }
                Ok(_) => self.last_byte = Instant::now(),
                Err(e) => return Err(ReadEnd::Error(MuxError::io(self.side, e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Framing;
    use bytes::Bytes;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_queued_together_leave_in_one_write() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(200);
        for i in 0..100u8 {
            tx.send(Frame::new(Bytes::from(vec![i; 10]))).await.unwrap();
        }
        drop(tx);
        let counters = IoCounters::default();
        let codec = FrameCodec::new(Framing::default());
        write_frames(
            client,
            rx,
            codec,
            Side::Upstream,
            Duration::from_secs(5),
            &counters,
        )
        .await
        .unwrap();
        assert_eq!(counters.frames_written.load(Ordering::Relaxed), 100);
        assert_eq!(counters.write_calls.load(Ordering::Relaxed), 1);
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 100 * 12);
        assert_eq!(&all[..3], &[0, 10, 0]);
    }

    /// A frame queued by a task that is still running when the writer wakes for the one
    /// before it goes out in the same write: the writer lets runnable tasks go first.
    #[tokio::test]
    async fn a_frame_queued_just_after_the_one_that_woke_the_writer_joins_its_write() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(200);
        let counters = Arc::new(IoCounters::default());
        let writer_counters = counters.clone();
        let writer = tokio::spawn(async move {
            let codec = FrameCodec::new(Framing::default());
            let (side, timeout) = (Side::Downstream, Duration::from_secs(5));
            write_frames(client, rx, codec, side, timeout, &writer_counters).await
        });
        // Let the writer start and wait for its first frame.
        tokio::task::yield_now().await;
        for round in 0..10u8 {
            // The first send wakes the writer; this task then yields once (as a task
            // answering the next request would run) before sending the second.
            tx.send(Frame::new(Bytes::from(vec![round; 10])))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            tx.send(Frame::new(Bytes::from(vec![round; 10])))
                .await
                .unwrap();
            while counters.frames_written.load(Ordering::Relaxed) < 2 * u64::from(round + 1) {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        writer.await.unwrap().unwrap();
        assert_eq!(counters.frames_written.load(Ordering::Relaxed), 20);
        assert_eq!(
            counters.write_calls.load(Ordering::Relaxed),
            10,
            "each pair in one write"
        );
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 20 * 12);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_trickled_in_past_its_deadline_ends_the_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(
            server,
            FrameCodec::new(Framing::default()),
            Side::Downstream,
        );
        let trickle = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for b in [0u8, 20, 1, 2, 3, 4, 5, 6] {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            client
        });
        let end = reader
            .next(Duration::from_secs(1), Some(Duration::from_secs(60)))
            .await;
        assert!(matches!(end, Err(ReadEnd::FrameTimeout)), "{end:?}");
        drop(trickle);
    }
}
