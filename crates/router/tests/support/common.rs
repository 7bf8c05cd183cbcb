//! What the router's tests share (the stage tests include this file by path, the
//! integration tests as a module): a scripted issuer port, and counters read back.

#![allow(clippy::unwrap_used)] // Test helpers: a failed unwrap is a failed test.

use std::sync::{Arc, Mutex};

use switchyard_iso8583::{MessageBuilder, MessageView, Spec};
use switchyard_mux::{BeforeSend, Forwarded, MuxError};
use switchyard_router::IssuerPort;

/// An issuer whose answer is chosen by the request's amount: 1 timeout, 2 link down, 3 link
/// busy, 4 connection lost, 5 duplicate in flight, other even amounts approved (38 =
/// AUTH01), odd ones declined (05). The STAN it sees is 4242.
pub struct Scripted {
    pub spec: &'static Spec,
    pub seen: Mutex<Vec<MessageView<'static>>>,
}

impl IssuerPort for Scripted {
    fn spec(&self) -> &'static Spec {
        self.spec
    }

    async fn forward(&self, request: &MessageView<'static>) -> Forwarded {
        self.seen.lock().unwrap().push(request.clone());
        let amount = request.field(4).and_then(|f| f.as_u64()).unwrap_or(0);
        let link: Arc<str> = "issuer".into();
        let result = match amount {
            1 => Err(MuxError::Timeout {
                link,
                timeout_ms: 100,
            }),
            2 => Err(MuxError::LinkDown { link }),
            3 => Err(MuxError::LinkBusy { link, limit: 1 }),
            4 => Err(MuxError::ConnectionLost { link }),
            5 => Err(MuxError::DuplicateInFlight { link }),
            _ => {
                let code: &[u8] = if amount.is_multiple_of(2) {
                    b"00"
                } else {
                    b"05"
                };
                let mut b = MessageBuilder::new(self.spec, request.mti());
                b.respond_to(request, code).unwrap();
                b.set(38, "AUTH01").unwrap();
                Ok(MessageView::decode(self.spec, b.encode()).unwrap())
            }
        };
        Forwarded {
            issuer_stan: Some(4242),
            result,
        }
    }

    async fn forward_with(
        &self,
        request: &MessageView<'static>,
        before_send: impl BeforeSend,
    ) -> Forwarded {
        if !before_send.before_send(Some(4242)).await {
            return Forwarded {
                issuer_stan: None,
                result: Err(MuxError::NotSent {
                    link: "issuer".into(),
                }),
            };
        }
        self.forward(request).await
    }
}

/// The sum of a counter's series in `registry` with these labels.
pub fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|m| m.name() == name)
        .flat_map(|m| m.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}
