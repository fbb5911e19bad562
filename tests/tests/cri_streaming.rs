//! End-to-end tests of the CRI streaming server with a client that speaks what kubectl and
//! crictl speak (WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io` / `portforward.k8s.io`,
//! and SPDY/3.1): exec with a terminal (input echoed, a resize seen by `stty size`), exec
//! without one (separate stdout/stderr, exit codes, stdin closed by the client), attach to a
//! container that echoes its stdin, port-forward to a busybox httpd inside a pod, single-use
//! tokens, and the RPCs' bad input.

use std::time::Duration;

use berth_api::runtime::v1 as cri;
use berth_tests::Mode;
use berth_tests::cri::{CriBerth, container_config};
use berth_tests::cri_stream::{self, Protocol, STDERR, STDIN, STDOUT, Session, Streams};
use berth_tests::fixtures::registry::free_port;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

/// A pod with three running containers: `sleeper` (for execs), `echoer` (a `cat` with stdin
/// open, for attach) and `web` (busybox httpd on port 8080).
struct Pod {
    id: String,
    sleeper: String,
    echoer: String,
}

fn create(
    env: &CriBerth,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let mut rt = env.runtime().unwrap();
    let id = env
        .block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        }))
        .unwrap_or_else(|e| panic!("create container: {e:?}\n{}", env.logs()))
        .into_inner()
        .container_id;
    env.block_on(rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    }))
    .unwrap_or_else(|e| panic!("start container: {e:?}\n{}", env.logs()));
    id
}

fn pod(env: &CriBerth) -> Pod {
    let sandbox = env.pod_config("streams").unwrap();
    let id = env.run_pod(sandbox.clone()).unwrap();
    let sleeper = create(
        env,
        &id,
        &sandbox,
        container_config("sleeper", &["sleep", "3600"]),
    );
    let mut echo = container_config("echoer", &["cat"]);
    echo.stdin = true;
    let echoer = create(env, &id, &sandbox, echo);
    let web = container_config(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    create(env, &id, &sandbox, web);
    Pod {
        id,
        sleeper,
        echoer,
    }
}

fn exec_url(env: &CriBerth, request: cri::ExecRequest) -> Result<String, tonic::Status> {
    let mut rt = env.runtime().unwrap();
    env.block_on(rt.exec(request)).map(|r| r.into_inner().url)
}

fn exec_request(container: &str, cmd: &[&str], streams: Streams) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.to_owned(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty: streams.tty,
        stdin: streams.stdin,
        stdout: streams.stdout,
        stderr: streams.stderr,
    }
}

fn exit_code(session: &Session) -> Option<String> {
    let status = session.status().unwrap();
    match status["status"].as_str() {
        Some("Success") => None,
        _ => {
            assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
            let cause = &status["details"]["causes"][0];
            assert_eq!(cause["reason"], "ExitCode", "{status}");
            Some(cause["message"].as_str().unwrap().to_owned())
        }
    }
}

/// Every exec, attach and port-forward case over `protocol`.
fn exercise(protocol: Protocol, pool: &str) {
    let env = CriBerth::start(Mode::AllInOne, pool, "").unwrap();
    let pod = pod(&env);
    let tty = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let piped = Streams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };

    // exec -it sh: input is echoed through the terminal, a resize shows in `stty size`, and
    // the shell's exit code comes back on the error channel.
    let url = exec_url(&env, exec_request(&pod.sleeper, &["sh"], tty)).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    env.block_on(async {
        let mut s = Session::stream(&url, protocol, tty).await.unwrap();
        s.resize(101, 33).await.unwrap();
        s.send(STDIN, b"echo hi-$((40+2))\n").await.unwrap();
        s.wait_for(STDOUT, "hi-42", WAIT).await.unwrap();
        s.send(STDIN, b"stty size\n").await.unwrap();
        s.wait_for(STDOUT, "33 101", WAIT).await.unwrap();
        s.resize(120, 40).await.unwrap();
        s.send(STDIN, b"stty size\n").await.unwrap();
        s.wait_for(STDOUT, "40 120", WAIT).await.unwrap();
        s.send(STDIN, b"exit 3\n").await.unwrap();
        s.wait_end(WAIT).await.unwrap();
        assert_eq!(exit_code(&s).as_deref(), Some("3"));
        assert!(s.clean, "the session must end with a normal close");
    });

    // The URL was good once: the same token again is 404, and so is one never issued.
    env.block_on(async {
        assert_eq!(
            cri_stream::upgrade_status(&url, protocol).await.unwrap(),
            404
        );
        let (base, _) = url.rsplit_once('/').unwrap();
        let forged = format!("{base}/{}", "ab".repeat(24));
        assert_eq!(
            cri_stream::upgrade_status(&forged, protocol).await.unwrap(),
            404
        );
    });

    // exec without a terminal: stdout and stderr apart, the exit code, success.
    let cmd = ["sh", "-c", "echo out; echo err >&2; exit 7"];
    let url = exec_url(&env, exec_request(&pod.sleeper, &cmd, piped)).unwrap();
    env.block_on(async {
        let mut s = Session::stream(&url, protocol, piped).await.unwrap();
        s.wait_end(WAIT).await.unwrap();
        assert_eq!(s.text(STDOUT), "out\n");
        assert_eq!(s.text(STDERR), "err\n");
        assert_eq!(exit_code(&s).as_deref(), Some("7"));
    });
    if protocol == Protocol::WebSocketV4 {
        // The text variant of v4 carries the same streams.
        let url = exec_url(&env, exec_request(&pod.sleeper, &cmd, piped)).unwrap();
        env.block_on(async {
            let mut s = Session::stream(&url, Protocol::WebSocketV4Base64, piped)
                .await
                .unwrap();
            s.wait_end(WAIT).await.unwrap();
            assert_eq!(
                (s.text(STDOUT).as_str(), s.text(STDERR).as_str()),
                ("out\n", "err\n")
            );
            assert_eq!(exit_code(&s).as_deref(), Some("7"));
        });
    }
    let url = exec_url(&env, exec_request(&pod.sleeper, &["true"], piped)).unwrap();
    env.block_on(async {
        let mut s = Session::stream(&url, protocol, piped).await.unwrap();
        s.wait_end(WAIT).await.unwrap();
        assert_eq!(exit_code(&s), None);
    });

    // stdin without a terminal: `head -c 5` ends after five bytes; where the protocol can
    // close stdin, `cat` ends when the client closes it.
    let with_stdin = Streams {
        stdin: true,
        ..piped
    };
    let url = exec_url(
        &env,
        exec_request(&pod.sleeper, &["head", "-c", "5"], with_stdin),
    )
    .unwrap();
    env.block_on(async {
        let mut s = Session::stream(&url, protocol, with_stdin).await.unwrap();
        s.send(STDIN, b"hello world").await.unwrap();
        s.wait_end(WAIT).await.unwrap();
        assert_eq!(s.text(STDOUT), "hello");
        assert_eq!(exit_code(&s), None);
    });
    if protocol != Protocol::WebSocketV4 {
        let url = exec_url(&env, exec_request(&pod.sleeper, &["cat"], with_stdin)).unwrap();
        env.block_on(async {
            let mut s = Session::stream(&url, protocol, with_stdin).await.unwrap();
            s.send(STDIN, b"to cat").await.unwrap();
            s.close(STDIN).await.unwrap();
            s.wait_end(WAIT).await.unwrap();
            assert_eq!(s.text(STDOUT), "to cat");
            assert_eq!(exit_code(&s), None);
        });
    }

    // attach to a container that echoes its stdin; leaving does not stop it.
    let attach = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    for round in 0..2 {
        let mut rt = env.runtime().unwrap();
        let url = env
            .block_on(rt.attach(cri::AttachRequest {
                container_id: pod.echoer.clone(),
                stdin: true,
                tty: false,
                stdout: true,
                stderr: true,
            }))
            .unwrap()
            .into_inner()
            .url;
        assert!(url.contains("/attach/"), "{url}");
        env.block_on(async {
            let s = &mut Session::stream(&url, protocol, attach).await.unwrap();
            let line = format!("ping-{round}\n");
            s.send(STDIN, line.as_bytes()).await.unwrap();
            s.wait_for(STDOUT, line.trim(), WAIT).await.unwrap();
        });
    }
    let mut rt = env.runtime().unwrap();
    let status = env
        .block_on(rt.container_status(cri::ContainerStatusRequest {
            container_id: pod.echoer.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state(), cri::ContainerState::ContainerRunning);

    // port-forward to the pod's httpd (it may take a moment to listen).
    let mut page = String::new();
    for _ in 0..40 {
        let url = env
            .block_on(rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod.id.clone(),
                port: vec![8080],
            }))
            .unwrap()
            .into_inner()
            .url;
        page = env.block_on(async {
            let mut s = Session::port_forward(&url, protocol, &[8080])
                .await
                .unwrap();
            s.send(0, b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            // SPDY connections stay open for more forwards: wait for the page, not the end.
            let _ = s
                .wait_for(0, "hello-from-pod", Duration::from_secs(2))
                .await;
            s.text(0) + &s.text(1)
        });
        if page.contains("hello-from-pod") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        page.contains("200 OK") && page.contains("hello-from-pod"),
        "{page}"
    );
    env.stop().unwrap();
}

#[test]
fn websocket_v5() {
    exercise(Protocol::WebSocketV5, "10.251.0.0");
}

#[test]
fn websocket_v4() {
    exercise(Protocol::WebSocketV4, "10.252.0.0");
}

#[test]
fn spdy() {
    exercise(Protocol::Spdy, "10.253.0.0");
}

/// The RPCs' bad input: empty commands, no streams, tty with stderr, unknown containers and
/// pods, ports out of range.
#[test]
fn bad_requests() {
    // The streaming server listens where `[cri]` says.
    let port = free_port().unwrap();
    let config = format!("[cri]\nstream_address = \"127.0.0.1\"\nstream_port = {port}\n");
    let env = CriBerth::start(Mode::AllInOne, "10.254.0.0", &config).unwrap();
    let sandbox = env.pod_config("bad").unwrap();
    let pod = env.run_pod(sandbox.clone()).unwrap();
    let sleeper = create(
        &env,
        &pod,
        &sandbox,
        container_config("sleeper", &["sleep", "3600"]),
    );
    let out = Streams {
        stdout: true,
        ..Default::default()
    };
    // A container that was created but never started.
    let mut rt = env.runtime().unwrap();
    let created = env
        .block_on(rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("idle", &["true"])),
            sandbox_config: Some(sandbox.clone()),
        }))
        .unwrap()
        .into_inner()
        .container_id;
    let cases = [
        (exec_request(&sleeper, &[], out), Code::InvalidArgument),
        (
            exec_request(&sleeper, &["true"], Streams::default()),
            Code::InvalidArgument,
        ),
        (
            exec_request(
                &sleeper,
                &["true"],
                Streams {
                    tty: true,
                    stderr: true,
                    ..out
                },
            ),
            Code::InvalidArgument,
        ),
        (
            exec_request(&"0".repeat(64), &["true"], out),
            Code::NotFound,
        ),
        (exec_request("", &["true"], out), Code::InvalidArgument),
        (
            exec_request(&created, &["true"], out),
            Code::FailedPrecondition,
        ),
    ];
    let url = exec_url(&env, exec_request(&sleeper, &["true"], out)).unwrap();
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/exec/")),
        "{url}"
    );
    for (request, code) in cases {
        let e = exec_url(&env, request.clone()).unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e:?}");
    }
    let mut rt = env.runtime().unwrap();
    let e = env
        .block_on(rt.attach(cri::AttachRequest {
            container_id: "f".repeat(64),
            stdout: true,
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for (pod_id, port, code) in [
        ("f".repeat(64), 80, Code::NotFound),
        (pod.clone(), 0, Code::InvalidArgument),
        (pod.clone(), 70000, Code::InvalidArgument),
    ] {
        let e = env
            .block_on(rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: pod_id,
                port: vec![port],
            }))
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    // A client that leaves in the middle of an exec takes the exec's process with it.
    let url = exec_url(&env, exec_request(&sleeper, &["sleep", "999"], out)).unwrap();
    let session = env
        .block_on(Session::stream(&url, Protocol::WebSocketV5, out))
        .unwrap();
    let ps = |env: &CriBerth| {
        let mut rt = env.runtime().unwrap();
        let r = env
            .block_on(rt.exec_sync(cri::ExecSyncRequest {
                container_id: sleeper.clone(),
                cmd: vec!["ps".into()],
                timeout: 10,
            }))
            .unwrap()
            .into_inner();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    let mut running = false;
    for _ in 0..50 {
        if ps(&env).contains("sleep 999") {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        running,
        "the exec runs while its client is there: {}",
        ps(&env)
    );
    drop(session);
    let mut gone = false;
    for _ in 0..50 {
        if !ps(&env).contains("sleep 999") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "the exec outlived its client: {}", ps(&env));

    // A port the request did not name is refused on the stream's error channel.
    let url = env
        .block_on(rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        }))
        .unwrap()
        .into_inner()
        .url;
    env.block_on(async {
        let mut s = Session::port_forward(&url, Protocol::WebSocketV5, &[9090])
            .await
            .unwrap();
        s.wait_end(WAIT).await.unwrap();
        assert!(s.text(1).contains("not named"), "{:?}", s.text(1));
    });
    env.stop().unwrap();
}
