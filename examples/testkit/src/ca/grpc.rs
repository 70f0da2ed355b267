//! gRPC on the server side, by hand over `h2`: one unary method. A request is a 5-byte
//! prefix (compressed flag, big-endian length) and a protobuf message; the answer is
//! HEADERS, one such DATA message and trailers with `grpc-status`, or a trailers-only
//! answer for an error (the gRPC over HTTP/2 protocol).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Request, Response};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};

use super::sign::{IstioCertificateRequest, IstioCertificateResponse, Signer};
use super::{CREATE_CERTIFICATE, SeenCall, State, TokenReviewer};

const MAX_MESSAGE: usize = 1 << 20;

/// gRPC status codes used here.
const OK: u32 = 0;
const INVALID_ARGUMENT: u32 = 3;
const INTERNAL: u32 = 13;
const UNIMPLEMENTED: u32 = 12;
const UNAVAILABLE: u32 = 14;
const UNAUTHENTICATED: u32 = 16;

pub(crate) struct Ctx {
    pub signer: Arc<Signer>,
    pub reviewer: Arc<dyn TokenReviewer>,
    pub cluster_id: String,
    pub max_lifetime: Duration,
    pub state: Arc<State>,
}

pub(crate) async fn serve_connection<T>(io: T, ctx: Arc<Ctx>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(10), h2::server::handshake(io)).await
    else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move { handle(req, respond, ctx).await });
    }
}

type Answer = Result<IstioCertificateResponse, (u32, String)>;

async fn handle(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, ctx: Arc<Ctx>) {
    ctx.state.calls.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let mut seen = SeenCall {
        cluster_id: header(&parts.headers, "clusterid"),
        requested_seconds: 0,
        issued: None,
        status: OK,
    };
    let answer = answer(&parts, body, &ctx, &mut seen).await;
    seen.status = match &answer {
        Ok(_) => OK,
        Err((code, _)) => *code,
    };
    ctx.state.seen.lock().expect("lock").push(seen);
    let _ = send(&mut respond, answer);
}

async fn answer(
    parts: &http::request::Parts,
    body: RecvStream,
    ctx: &Ctx,
    seen: &mut SeenCall,
) -> Answer {
    let is_grpc =
        header(&parts.headers, "content-type").is_some_and(|c| c.starts_with("application/grpc"));
    if parts.method != http::Method::POST || parts.uri.path() != CREATE_CERTIFICATE || !is_grpc {
        return Err((
            UNIMPLEMENTED,
            format!("unknown method {}", parts.uri.path()),
        ));
    }
    let msg = read_message(body).await.map_err(|e| (INTERNAL, e))?;
    let req = IstioCertificateRequest::decode(msg)
        .map_err(|e| (INTERNAL, format!("grpc: error unmarshalling request: {e}")))?;
    seen.requested_seconds = req.validity_duration;
    let delay = *ctx.state.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let st = &ctx.state;
    let counted_failure = st
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if counted_failure || st.fail_always.load(Ordering::SeqCst) {
        return Err((UNAVAILABLE, "test server told to fail".into()));
    }
    // kube_jwt.go `Authenticate`: the clusterid header picks the API server; a cluster it
    // does not know is refused. Then the bearer token's TokenReview.
    if let Some(c) = &seen.cluster_id
        && c != &ctx.cluster_id
    {
        return Err((
            UNAUTHENTICATED,
            format!(
                "request authenticate failure: client claims to be in cluster {c:?}, but we only know about local cluster {:?}",
                ctx.cluster_id
            ),
        ));
    }
    let token = header(&parts.headers, "authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .ok_or((
            UNAUTHENTICATED,
            "request authenticate failure: no bearer token".into(),
        ))?;
    let who = ctx.reviewer.review(token).await.map_err(|e| {
        (
            UNAUTHENTICATED,
            format!("request authenticate failure: {e}"),
        )
    })?;
    // server.go: validity_duration <= 0 means the default; more than the max is refused
    // (`ca.go` `IstioCA.Sign`: TTLError, InvalidArgument), not capped.
    let forced = *st.forced_lifetime.lock().expect("lock");
    let asked = u64::try_from(req.validity_duration)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(24 * 3600));
    if forced.is_none() && asked > ctx.max_lifetime {
        return Err((
            INVALID_ARGUMENT,
            format!(
                "failed to sign CSR: requested TTL {}s is greater than the max allowed TTL {}s",
                asked.as_secs(),
                ctx.max_lifetime.as_secs()
            ),
        ));
    }
    let lifetime = forced.unwrap_or(asked);
    let (chain, id) = ctx
        .signer
        .sign(&req.csr, &who.namespace, &who.service_account, lifetime)
        .map_err(|e| (INVALID_ARGUMENT, e))?;
    st.issued.fetch_add(1, Ordering::SeqCst);
    seen.issued = Some(id);
    Ok(IstioCertificateResponse { cert_chain: chain })
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

/// The one length-prefixed, uncompressed message of a unary request.
async fn read_message(mut body: RecvStream) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_MESSAGE + 5 {
            return Err("message too large".into());
        }
    }
    if buf.len() < 5 {
        return Err("no message".into());
    }
    if buf[0] != 0 {
        return Err("compressed messages are not supported".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() != 5 + len {
        return Err(format!("message length {len} but {} bytes", buf.len() - 5));
    }
    Ok(buf.freeze().slice(5..))
}

fn send(respond: &mut SendResponse<Bytes>, answer: Answer) -> Result<(), h2::Error> {
    let head = |end| {
        let r = Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        (r, end)
    };
    match answer {
        Ok(msg) => {
            let (r, _) = head(false);
            let mut stream = respond.send_response(r.body(()).expect("static head"), false)?;
            let body = msg.encode_to_vec();
            let mut framed = BytesMut::with_capacity(5 + body.len());
            framed.put_u8(0);
            framed.put_u32(body.len() as u32);
            framed.extend_from_slice(&body);
            stream.send_data(framed.freeze(), false)?;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("static"));
            stream.send_trailers(trailers)
        }
        Err((code, message)) => {
            // trailers-only: one HEADERS frame with END_STREAM
            let (r, _) = head(true);
            let message = message.replace(['\r', '\n'], " ");
            let r = r
                .header("grpc-status", code.to_string())
                .header("grpc-message", percent_encode(&message))
                .body(())
                .expect("valid head");
            respond.send_response(r, true).map(drop)
        }
    }
}

/// grpc-message is percent-encoded outside printable ASCII and '%'.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
