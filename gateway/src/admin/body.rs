//! The admin responses' body: the bytes in frames of at most 64 KiB, and for the large
//! responses (/metrics, /debug/routes, which grow with the route table) a permit of the
//! admin's budget held until the last frame is taken. hyper asks for the next frame only when
//! its write buffer has room, so a slow or stalled reader keeps one permit, not a growing
//! number of serialized tables.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

const FRAME: usize = 64 * 1024;

pub struct AdminBody {
    rest: Bytes,
    permit: Option<OwnedSemaphorePermit>,
}

impl AdminBody {
    pub fn new(rest: Bytes) -> AdminBody {
        AdminBody { rest, permit: None }
    }

    /// A body that holds `permit` until its last frame has been taken.
    pub fn holding(rest: Bytes, permit: OwnedSemaphorePermit) -> AdminBody {
        AdminBody {
            rest,
            permit: Some(permit),
        }
    }
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            self.permit = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(FRAME);
        let frame = self.rest.split_to(n);
        if self.rest.is_empty() {
            self.permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    #[tokio::test]
    async fn frames_are_bounded_and_the_permit_is_released_with_the_last() {
        let budget = Arc::new(Semaphore::new(1));
        let permit = budget.clone().try_acquire_owned().unwrap();
        let data = Bytes::from(vec![7u8; 3 * FRAME + 5]);
        let mut body = AdminBody::holding(data, permit);
        assert_eq!(body.size_hint().exact(), Some(3 * FRAME as u64 + 5));
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let f = body.frame().await.unwrap().unwrap();
            sizes.push(f.into_data().unwrap().len());
            assert_eq!(
                budget.available_permits(),
                0,
                "released before the last frame"
            );
        }
        let last = body.frame().await.unwrap().unwrap();
        sizes.push(last.into_data().unwrap().len());
        assert_eq!(sizes, [FRAME, FRAME, FRAME, 5]);
        assert!(body.is_end_stream());
        assert_eq!(budget.available_permits(), 1);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let mut body = AdminBody::new(Bytes::new());
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
