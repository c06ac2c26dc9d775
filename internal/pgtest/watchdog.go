package pgtest

import (
	"io"
	"os/exec"
)

// watchdogScript runs in a separate process whose stdin is a pipe held
// only by us. When we exit in any way, including a panic in a test
// goroutine, a test timeout or SIGKILL, none of which run Stop, the pipe
// closes; the script then ends, in turn, each process whose pid file
// follows $1 (a postmaster, a pgbouncer, a pg_autoctl), with its process
// group, and removes $1. After a normal Stop it finds
// nothing left to do. The process removes its pid file when it exits;
// that, not kill -0, is the sign to go on,
// because the exited postmaster lingers as a zombie until whoever inherits
// it gets round to reaping it.
const watchdogScript = `
cat >/dev/null
dir="$1"
shift
for pidfile in "$@"; do
	pid=$(head -n 1 "$pidfile" 2>/dev/null)
	if [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null; then
		i=0
		while [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -KILL -- "-$pid" 2>/dev/null
	fi
done
rm -rf "$dir"
`

// watchdog is the running watchdogScript.
type watchdog struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startWatchdog is best effort: without /bin/sh the server still works,
// it just is not cleaned up if we die without calling Stop.
func startWatchdog(dir string, pidfiles []string, logf func(string, ...any)) *watchdog {
	cmd := exec.Command("/bin/sh", append([]string{"-c", watchdogScript, "pgtest-watchdog", dir}, pidfiles...)...)
	// Its own process group keeps a Ctrl-C aimed at us from killing it
	// before it has done its job.
	cmd.SysProcAttr = sysProcAttr(nil)
	stdin, err := cmd.StdinPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		logf("pgtest: no cleanup watchdog: %v", err)
		return nil
	}
	return &watchdog{cmd: cmd, stdin: stdin}
}

// stop lets the script run to completion and reaps it.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	_ = w.stdin.Close()
	_ = w.cmd.Wait()
}
