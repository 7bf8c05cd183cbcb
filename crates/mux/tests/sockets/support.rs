//! Test support: messages, a terminal client, an approving handler, a fake issuer host and
//! certificates made at test time (no private key is committed).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti, Spec};
use switchyard_mux::{ConnectionInfo, Frame, FrameCodec, Framing, Handler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn spec() -> &'static Spec {
    shipped("iso8583-1987-ascii").unwrap()
}

/// A 0200 from terminal `tid` with STAN `stan` and `amount` (minor units).
pub fn request(stan: u32, tid: &str, amount: u64) -> Bytes {
    let mut b = MessageBuilder::new(spec(), Mti::parse("0200").unwrap());
    b.set(3, "000000").unwrap();
    b.set_u64(4, amount).unwrap();
    b.set(7, "1124093000").unwrap();
    b.set_u64(11, u64::from(stan)).unwrap();
    b.set(41, tid).unwrap();
    b.set(49, "978").unwrap();
    b.encode()
}

pub fn view(message: Bytes) -> MessageView<'static> {
    MessageView::decode(spec(), message).unwrap()
}

/// The response to `request` with field 39 = `code`.
pub fn respond(request: &MessageView<'_>, code: &[u8]) -> Bytes {
    let mut b = MessageBuilder::new(spec(), request.mti());
    b.respond_to(request, code).unwrap();
    b.encode()
}

/// A terminal (or any peer) speaking framed messages over a stream.
pub struct Peer<S> {
    stream: S,
    codec: FrameCodec,
    buf: BytesMut,
}

impl Peer<TcpStream> {
    pub async fn connect(addr: SocketAddr, framing: Framing) -> Peer<TcpStream> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Peer::new(stream, framing)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    pub fn new(stream: S, framing: Framing) -> Peer<S> {
        Peer {
            stream,
            codec: FrameCodec::new(framing),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_message(&mut self, message: Bytes) {
        self.send(Frame::new(message)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame; `None` when the peer closed (or reset) the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no frame and no close within the test's wait")
    }

    /// Send `message` and return the answer's message.
    pub async fn call(&mut self, message: Bytes) -> MessageView<'static> {
        self.send_message(message).await;
        view(
            self.recv()
                .await
                .expect("connection closed instead of answering")
                .message,
        )
    }

    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// Answers every request with 00, optionally after `amount` milliseconds (so that answers
/// can be made to come back out of order), and records concurrency and client certificates.
#[derive(Default)]
pub struct Approver {
    pub delay_by_amount: bool,
    pub running: AtomicUsize,
    pub most_running: AtomicUsize,
    pub handled: AtomicUsize,
    pub client_certificates: Mutex<Vec<bool>>,
}

impl Handler for Approver {
    async fn request(
        &self,
        conn: &Arc<ConnectionInfo>,
        request: MessageView<'static>,
    ) -> Option<Bytes> {
        self.client_certificates
            .lock()
            .unwrap()
            .push(conn.client_certificate.is_some());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        if self.delay_by_amount {
            let ms = request
                .str(4)
                .and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.handled.fetch_add(1, Ordering::SeqCst);
        Some(respond(&request, b"00"))
    }
}

/// What a fake issuer does with one request.
pub enum Reply {
    /// Answer with this response code now.
    Code(&'static [u8]),
    /// Answer with 00 after a delay.
    After(Duration),
    /// Send these raw message bytes.
    Raw(Bytes),
    /// Say nothing.
    Ignore,
    /// Close the connection.
    Close,
}

type Behaviour = dyn Fn(&MessageView<'static>) -> Reply + Send + Sync;

/// An issuer host on 127.0.0.1 that answers per a behaviour function. With `batch = n` it
/// collects n requests and answers them all in a shuffled order.
pub struct FakeIssuer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<MessageView<'static>>>>,
    /// Senders to each connection: lets a test push issuer-initiated messages.
    pub connections: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIssuer {
    pub async fn start(
        framing: Framing,
        batch: Option<usize>,
        behaviour: impl Fn(&MessageView<'static>) -> Reply + Send + Sync + 'static,
    ) -> FakeIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, framing, batch, Arc::new(behaviour))
    }

    pub fn serve(
        listener: TcpListener,
        framing: Framing,
        batch: Option<usize>,
        behaviour: Arc<Behaviour>,
    ) -> FakeIssuer {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (acc, rec, conns) = (accepted.clone(), received.clone(), connections.clone());
        let task = tokio::spawn(async move {
            let mut handlers = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (rec, behaviour) = (rec.clone(), behaviour.clone());
                let (tx, rx) = mpsc::channel::<Bytes>(4096);
                conns.lock().unwrap().push(tx.clone());
                handlers.push(AbortOnDrop(tokio::spawn(issuer_connection(
                    stream, framing, batch, behaviour, rec, tx, rx,
                ))));
            }
        });
        FakeIssuer {
            addr,
            accepted,
            received,
            connections,
            task,
        }
    }

    pub fn received_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn issuer_connection(
    stream: TcpStream,
    framing: Framing,
    batch: Option<usize>,
    behaviour: Arc<Behaviour>,
    received: Arc<Mutex<Vec<MessageView<'static>>>>,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let (mut input, mut output) = tokio::io::split(stream);
    let writer = AbortOnDrop(tokio::spawn(async move {
        let mut codec = FrameCodec::new(framing);
        while let Some(message) = rx.recv().await {
            let mut out = BytesMut::new();
            codec.encode(Frame::new(message), &mut out).unwrap();
            if output.write_all(&out).await.is_err() {
                return;
            }
        }
    }));
    let mut codec = FrameCodec::new(framing);
    let mut buf = BytesMut::new();
    let mut held: Vec<Bytes> = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    loop {
        let frame = match codec.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => match input.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(_) => break,
        };
        let request = match MessageView::decode(spec(), frame.message) {
            Ok(v) => v,
            Err(_) => continue,
        };
        received.lock().unwrap().push(request.clone());
        if !request.mti().is_request() {
            continue;
        }
        match behaviour(&request) {
            Reply::Code(code) => {
                let response = respond(&request, code);
                match batch {
                    Some(n) => {
                        held.push(response);
                        if held.len() == n {
                            // Fisher-Yates with xorshift: answers in a shuffled order.
                            for i in (1..held.len()).rev() {
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                held.swap(i, (rng % (i as u64 + 1)) as usize);
                            }
                            for r in held.drain(..) {
                                let _ = tx.send(r).await;
                            }
                        }
                    }
                    None => {
                        let _ = tx.send(response).await;
                    }
                }
            }
            Reply::After(delay) => {
                let (tx, response) = (tx.clone(), respond(&request, b"00"));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(response).await;
                });
            }
            Reply::Raw(bytes) => {
                let _ = tx.send(bytes).await;
            }
            Reply::Ignore => {}
            Reply::Close => break,
        }
    }
    drop(writer);
}

/// Test certificates: a CA, a server certificate for localhost/127.0.0.1 and a client
/// certificate it issued, written as PEM files to a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA named `name`: writes `name-ca.pem` and returns its issuer.
    pub fn ca(&self, name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = self.path(&format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca { cert, key, path }
    }

    /// A leaf certificate for `names`, issued by `ca`, written as `file`.pem / `file`.key.
    pub fn issue(&self, ca: &Ca, names: &[&str], file: &str) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let issued = Issued {
            cert: self.path(&format!("{file}.pem")),
            key: self.path(&format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub path: PathBuf,
}

/// Poll `cond` every 10 ms until it holds; false after `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
