//! The benchmark backend shared by the bench examples: a minimal hyper HTTP/1.1 server
//! that answers every request with its color (body and `x-color` header), optionally
//! after some work per request.

// Each example that includes this file uses only part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Response header naming the backend's color.
pub const X_COLOR: HeaderName = HeaderName::from_static("x-color");

/// What the backend does for each request before answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Answer at once.
    None,
    /// Wait this long without using the CPU (an application waiting on a database).
    /// The wait happens on one of tokio's blocking threads (up to 512 at once).
    Sleep(Duration),
    /// Keep one core busy this long (an application computing its answer).
    Spin(Duration),
}

/// Serves the listener until the process ends.
pub async fn serve(listener: TcpListener, color: String, work: Work) {
    // Built once: every answer is the same bytes.
    let body = Bytes::from(format!("hello from {color}\n"));
    let color = HeaderValue::from_str(&color).unwrap_or(HeaderValue::from_static("none"));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                eprintln!("backend: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Loopback request/response traffic: never wait for more bytes to fill a packet.
        let _ = stream.set_nodelay(true);
        let (body, color) = (body.clone(), color.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (body, color) = (body.clone(), color.clone());
                async move {
                    if request.uri().path() != "/ready" {
                        do_work(work).await;
                    }
                    let mut response = Response::new(Full::new(body));
                    let headers = response.headers_mut();
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    headers.insert(X_COLOR, color);
                    Ok::<_, Infallible>(response)
                }
            });
            // Errors are clients going away mid-request: nothing to do about them.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn do_work(work: Work) {
    match work {
        Work::None => {}
        // tokio's timer has a 1 ms granularity and fires late on a busy runtime (a
        // 1 ms sleep took about 3 ms under load), so the wait is a precise OS sleep on
        // a blocking thread instead.
        Work::Sleep(duration) => {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(duration)).await;
        }
        Work::Spin(duration) => {
            let until = Instant::now() + duration;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
}
