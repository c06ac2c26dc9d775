package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ErrNoPgBouncer reports that the pgbouncer binary was not found.
var ErrNoPgBouncer = errors.New("pgtest: no pgbouncer binary found")

// PgBouncerInstallHint tells a person how to make pgbouncer available.
const PgBouncerInstallHint = "PgBouncer is needed for the pooler tests. Install it with `apt-get install pgbouncer` " +
	"on Debian/Ubuntu or `brew install pgbouncer` on macOS; the tests run their own pgbouncer process, never the system service."

// pgbouncerSearch are tried after PATH: Debian installs into /usr/sbin,
// which is not on every user's PATH.
var pgbouncerSearch = []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/opt/homebrew/bin/pgbouncer", "/usr/local/bin/pgbouncer"}

// Databases that the PgBouncer of StartPgBouncer serves, each a pool of
// the server's database postgres.
const (
	// SessionPool gives a client one server connection for its whole
	// session.
	SessionPool = "session_pool"
	// TransactionPool gives a client a server connection per transaction
	// (per statement outside one).
	TransactionPool = "transaction_pool"
)

// PgBouncerPoolSize is the number of server connections per pool.
const PgBouncerPoolSize = 40

// PgBouncer is a running pgbouncer process in front of a Server.
type PgBouncer struct {
	port    int
	dir     string
	version string
	logf    func(format string, args ...any)

	// mu guards the fields below and makes Stop idempotent.
	mu       sync.Mutex
	proc     *exec.Cmd
	exited   chan struct{} // closed once proc has been reaped
	log      *os.File
	watchdog *watchdog
}

// FindPgBouncer returns the path of the pgbouncer binary; the error wraps
// ErrNoPgBouncer.
func FindPgBouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	for _, p := range pgbouncerSearch {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w; searched PATH, %s", ErrNoPgBouncer, strings.Join(pgbouncerSearch, ", "))
}

// StartPgBouncer starts pgbouncer on a free loopback port in front of s,
// with its own configuration in a temporary directory: databases
// SessionPool and TransactionPool, user postgres trusted, the admin
// console (database pgbouncer) open to postgres. Run as root, it runs as
// the server's unprivileged account. The caller must call Stop.
func StartPgBouncer(s *Server, logf func(format string, args ...any)) (*PgBouncer, error) {
	bin, err := FindPgBouncer()
	if err != nil {
		return nil, err
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	b := &PgBouncer{logf: logf}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer --version: %w", err)
	}
	// "PgBouncer 1.18.0" on the first line.
	if f := strings.Fields(string(out)); len(f) >= 2 {
		b.version = f[1]
	}
	if b.dir, err = os.MkdirTemp("", "pgbouncer-"); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if s.owner != nil {
		if err := s.handOver(b.dir); err != nil {
			_ = os.RemoveAll(b.dir)
			return nil, err
		}
	}
	b.watchdog = startWatchdog(b.dir, []string{filepath.Join(b.dir, "pgbouncer.pid")}, logf)
	for attempt := 1; ; attempt++ {
		if b.port, err = freePort(); err == nil {
			err = b.start(bin, s)
		}
		if err == nil {
			logf("pgtest: pgbouncer %s ready on port %d", b.version, b.port)
			return b, nil
		}
		if !errors.Is(err, errBind) || attempt == bindAttempts {
			_ = b.Stop()
			return nil, err
		}
	}
}

func (b *PgBouncer) start(bin string, s *Server) error {
	ini := fmt.Sprintf(`[databases]
%[1]s = host=127.0.0.1 port=%[3]d dbname=postgres user=postgres pool_mode=session
%[2]s = host=127.0.0.1 port=%[3]d dbname=postgres user=postgres pool_mode=transaction

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[4]d
unix_socket_dir =
auth_type = trust
auth_file = %[5]s
admin_users = postgres
max_client_conn = 500
default_pool_size = %[7]d
; lib/pq sends it at startup; PgBouncer refuses unknown parameters.
ignore_startup_parameters = extra_float_digits
server_login_retry = 1
; for the watchdog, which ends pgbouncer if the tests die without Stop
pidfile = %[6]s
`, SessionPool, TransactionPool, s.port, b.port, filepath.Join(b.dir, "users.txt"), filepath.Join(b.dir, "pgbouncer.pid"), PgBouncerPoolSize)
	files := map[string]string{"pgbouncer.ini": ini, "users.txt": `"postgres" ""` + "\n"}
	for name, data := range files {
		p := filepath.Join(b.dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if s.owner != nil {
			if err := os.Chown(p, int(s.owner.uid), int(s.owner.gid)); err != nil {
				return fmt.Errorf("pgtest: %w", err)
			}
		}
	}
	var err error
	if b.log == nil {
		if b.log, err = os.OpenFile(filepath.Join(b.dir, "pgbouncer.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	logStart, _ := b.log.Seek(0, io.SeekEnd)
	cmd := exec.Command(bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = b.log, b.log
	cmd.SysProcAttr = sysProcAttr(s.owner)
	cmd.Env = childEnv()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start pgbouncer: %w", err)
	}
	exited := make(chan struct{})
	b.proc, b.exited = cmd, exited
	// Reaper: lets the readiness check and Stop notice the exit; it ends
	// when pgbouncer exits, which Stop (or the watchdog) ensures.
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := b.waitReady(); err != nil {
		b.stopProcess()
		tail := b.logTail(logStart)
		if strings.Contains(tail, "Address already in use") {
			return fmt.Errorf("%w %d: %w\n%s", errBind, b.port, err, tail)
		}
		return fmt.Errorf("%w\n%s", err, tail)
	}
	return nil
}

func (b *PgBouncer) waitReady() error {
	return waitReady("pgbouncer", b.DSN(SessionPool), b.exited)
}

// DSN returns a key=value DSN for database db (SessionPool,
// TransactionPool, or pgbouncer for the admin console) as user postgres.
func (b *PgBouncer) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", b.port, db)
}

// Port returns the loopback TCP port pgbouncer listens on.
func (b *PgBouncer) Port() int { return b.port }

// Version returns pgbouncer's version, such as "1.18.0".
func (b *PgBouncer) Version() string { return b.version }

// stopProcess ends pgbouncer: SIGTERM is its immediate shutdown.
func (b *PgBouncer) stopProcess() {
	if b.proc == nil {
		return
	}
	p, exited := b.proc.Process, b.exited
	b.proc, b.exited = nil, nil
	_ = signalTerminate(p)
	select {
	case <-exited:
		return
	case <-time.After(immediateStopTimeout):
	}
	_ = p.Kill()
	<-exited
}

// Stop ends pgbouncer and removes its directory; later calls do nothing.
func (b *PgBouncer) Stop() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopProcess()
	if b.log != nil {
		_ = b.log.Close()
		b.log = nil
	}
	var err error
	if b.dir != "" {
		err = os.RemoveAll(b.dir)
		b.dir = ""
	}
	b.watchdog.stop()
	b.watchdog = nil
	return err
}

func (b *PgBouncer) logTail(from int64) string {
	data, err := os.ReadFile(filepath.Join(b.dir, "pgbouncer.log"))
	if err != nil || int64(len(data)) < from {
		return ""
	}
	data = bytes.TrimSpace(data[from:])
	if len(data) > logTailBytes {
		data = data[len(data)-logTailBytes:]
	}
	return "pgbouncer log:\n" + string(data)
}
