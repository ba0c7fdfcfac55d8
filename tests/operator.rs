//! The operator's view of a relay, through the library: live sessions and streams with
//! their bytes, closing a credential's sessions, cutting a stream, and the event hook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_core::*;
use tunnel_testkit::*;

const DEVICE: usize = 0;
const USER: usize = 1;

/// Keeps every event, for the test to read.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Event>>>);

impl EventSink for Recorder {
    fn event(&self, event: &Event) {
        self.0.lock().expect("recorder").push(event.clone());
    }
}

impl Recorder {
    fn names(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .expect("recorder")
            .iter()
            .map(|e| match e {
                Event::AuthSucceeded { .. } => "auth",
                Event::AuthFailed { .. } => "auth_failed",
                Event::SessionEnded { .. } => "session_ended",
                Event::DeviceOnline { .. } => "online",
                Event::DeviceOffline { .. } => "offline",
                Event::PublicPortBound { .. } => "public_port",
                Event::StreamOpened { .. } => "opened",
                Event::StreamRefused { .. } => "refused",
                Event::StreamClosed { .. } => "closed",
                _ => "other",
            })
            .collect()
    }
}

async fn relay_recording(events: Recorder) -> TestRelay {
    spawn_relay_with(
        &[
            ("pi", may_register("pi")),
            ("user", may_access(&["pi/echo"])),
        ],
        move |b| b.events(events.clone()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_streams_are_listed_with_their_bytes_and_events_tell_the_story() {
    let events = Recorder::default();
    let relay = relay_recording(events.clone()).await;
    let echo = spawn_echo_server().await;
    let device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;
    let mut stream = dial(&dialer, "pi", "echo").await;
    stream.write_all(b"hello").await.expect("write");
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).await.expect("read");

    let sessions = relay.relay.sessions();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let dev = sessions
        .iter()
        .find(|s| s.role == SessionRole::Device)
        .expect("device session");
    assert_eq!(
        (dev.device.as_deref(), dev.principal.as_str()),
        (Some("pi"), "token:pi")
    );
    // The relay counts a write once it returns, which can be just after the bytes left.
    eventually("the stream's bytes are counted", WAIT, || {
        let counted = relay.relay.streams().first().map(|s| (s.up, s.down)) == Some((5, 5));
        async move { counted }
    })
    .await;
    let streams = relay.relay.streams();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        (
            streams[0].caller.as_str(),
            streams[0].device.as_str(),
            streams[0].service.as_str()
        ),
        ("user", "pi", "echo")
    );
    assert_eq!((streams[0].up, streams[0].down), (5, 5));

    // A refused open is an event too.
    assert!(dialer.dial("pi", "ssh").await.is_err());
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("clean end");
    eventually("the stream leaves the table", WAIT, || {
        let empty = relay.relay.streams().is_empty();
        async move { empty }
    })
    .await;
    drop(device);
    relay.wait_offline("pi", WAIT).await;
    eventually("the device's session ended", WAIT, || {
        let n = events
            .names()
            .iter()
            .filter(|n| **n == "session_ended")
            .count();
        async move { n == 1 }
    })
    .await;
    assert_eq!(
        events.names(),
        [
            "auth",
            "online",
            "auth",
            "opened",
            "refused",
            "closed",
            "offline",
            "session_ended"
        ]
    );
    let closed = events
        .0
        .lock()
        .expect("recorder")
        .iter()
        .find_map(|e| match e {
            Event::StreamClosed {
                up, down, clean, ..
            } => Some((*up, *down, *clean)),
            _ => None,
        });
    assert_eq!(closed, Some((5, 5, true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_credentials_sessions_resets_its_streams_and_cutting_a_stream_resets_both_ends() {
    let relay = relay_recording(Recorder::default()).await;
    let echo = spawn_echo_server().await;
    let _device = relay.device(DEVICE, "pi", &[("echo", echo)]).await;
    let dialer = relay.dialer(USER).await;

    // Cut one stream: the caller reads an error, the session lives on.
    let mut stream = dial(&dialer, "pi", "echo").await;
    let id = relay.relay.streams()[0].id;
    assert!(relay.relay.cut_stream(id));
    expect_read_error(&mut stream, WAIT).await;
    let again = echo_exchange(dial(&dialer, "pi", "echo").await, b"still").await;
    assert_eq!(again, b"still");

    // Close the credential's sessions: its stream in flight is reset.
    let mut stream = dial(&dialer, "pi", "echo").await;
    assert_eq!(relay.relay.close_sessions_of("token:user"), 1);
    expect_read_error(&mut stream, WAIT).await;
    eventually("the access session is gone", WAIT, || {
        let left = relay
            .relay
            .sessions()
            .iter()
            .any(|s| s.principal == "token:user");
        async move { !left }
    })
    .await;
    assert!(!relay.relay.close_session(u64::MAX));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
