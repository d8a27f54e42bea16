//! The floor for `bench/lock`: the lock protocol's syscalls on one path and nothing else (no key
//! hashing, no error mapping, no bookkeeping, no sweep), so the table shows what each
//! implementation adds.
//!
//! Usage: `lock_floor <dir> <iterations> [<processes>]`. Each of `processes` forked workers
//! takes and releases the lock `iterations` times; prints `ns_per_op=<wall / all operations>`.

use std::{ffi::CString, io, mem, process, time::Instant};

/// Stops the process with the failed call's OS error.
fn check(rc: libc::c_int, call: &str) -> libc::c_int {
    if rc < 0 {
        eprintln!("lock_floor: {call}: {}", io::Error::last_os_error());
        // `_exit`: a forked worker must not run the parent's exit handlers.
        unsafe { libc::_exit(1) };
    }
    rc
}

/// One acquire and release, as `src/lock/file.rs` does them with its files kept: open (making
/// the file only where there is none), flock, fstat (a link count of 1: the path still names
/// the file; else look the path up), unlock, close. Retries when the path names another file.
fn lock_and_release(path: &CString) {
    let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    unsafe {
        loop {
            let mut fd = libc::open(path.as_ptr(), flags);
            if fd < 0 {
                // No file yet: make it (EEXIST here is another worker's, made since: open that).
                fd = libc::open(path.as_ptr(), flags | libc::O_CREAT | libc::O_EXCL, 0o600 as libc::c_uint);
                if fd < 0 {
                    continue;
                }
            }
            check(libc::flock(fd, libc::LOCK_EX), "flock(LOCK_EX)");
            let mut held: libc::stat = mem::zeroed();
            check(libc::fstat(fd, &mut held), "fstat");
            let same = held.st_nlink == 1 || {
                let mut named: libc::stat = mem::zeroed();
                held.st_nlink > 1 && libc::lstat(path.as_ptr(), &mut named) == 0 && (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
            };
            // Unlocked before the close, as the extension does for forks by other threads.
            libc::flock(fd, libc::LOCK_UN);
            libc::close(fd);
            if same {
                return;
            }
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: lock_floor <dir> <iterations> [<processes>]");
    process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(2..=3).contains(&args.len()) {
        usage();
    }
    let path = CString::new(format!("{}/floor.lock", args[0])).unwrap_or_else(|_| usage());
    let count = |arg: &str| arg.parse::<u64>().ok().filter(|&n| n > 0).unwrap_or_else(|| usage());
    let iterations = count(&args[1]);
    let processes = args.get(2).map_or(1, |arg| count(arg));

    // Start barrier: workers block reading this pipe until the parent closes the write end.
    let mut barrier = [0; 2];
    check(unsafe { libc::pipe(barrier.as_mut_ptr()) }, "pipe");
    for _ in 0..processes {
        if check(unsafe { libc::fork() }, "fork") == 0 {
            unsafe {
                libc::close(barrier[1]);
                let mut byte = 0u8;
                libc::read(barrier[0], (&mut byte as *mut u8).cast(), 1);
            }
            for _ in 0..iterations {
                lock_and_release(&path);
            }
            unsafe { libc::_exit(0) };
        }
    }

    let started = Instant::now();
    unsafe { libc::close(barrier[1]) };
    for _ in 0..processes {
        let mut status = 0;
        check(unsafe { libc::wait(&mut status) }, "wait");
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            eprintln!("lock_floor: a worker failed");
            process::exit(1);
        }
    }
    let operations = (iterations * processes) as f64;
    println!("ns_per_op={:.1}", started.elapsed().as_nanos() as f64 / operations);
}
