package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNoAutoFailover reports that pg_auto_failover is not installed for
// the server binaries FindBinDir finds: no pg_autoctl, or no
// pgautofailover extension beside the server.
var ErrNoAutoFailover = errors.New("pgtest: pg_auto_failover not found")

// AutoFailoverInstallHint tells a person how to make pg_auto_failover
// available.
const AutoFailoverInstallHint = "pg_auto_failover is needed for the failover test. Install it with " +
	"`apt-get install postgresql-<version>-auto-failover` on Debian/Ubuntu, for the version of the server binaries; " +
	"the test runs its own monitor and nodes, never a system service."

const (
	// formationTimeout bounds the wait for the nodes to reach their
	// first states (single, then primary and secondary).
	formationTimeout = 2 * time.Minute
	formationPoll    = 100 * time.Millisecond
	// autoctlStopTimeout bounds pg_autoctl's own stop of its postgres.
	autoctlStopTimeout = 15 * time.Second
)

// formationNodes is the number of PostgreSQL nodes of a Formation.
const formationNodes = 2

// monitorSettings make the monitor act in seconds: with pg_auto_failover's
// defaults a failover takes about a minute (health checks every 5 s, a
// node unhealthy after 20 s, a 30 s wait for the old primary to demote).
var monitorSettings = map[string]string{
	"pgautofailover.health_check_period":               "1000",
	"pgautofailover.health_check_timeout":              "1000",
	"pgautofailover.health_check_max_retries":          "1",
	"pgautofailover.health_check_retry_delay":          "500",
	"pgautofailover.node_considered_unhealthy_timeout": "2000",
	"pgautofailover.primary_demote_timeout":            "2000",
}

// FormationOptions configures StartFormation. The zero value is ready to use.
type FormationOptions struct {
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Formation is a pg_auto_failover formation on loopback: a monitor and
// two PostgreSQL nodes, a primary and its secondary, each node run by a
// pg_autoctl of its own, which is what promotes the secondary when the
// primary dies. The monitor acts within seconds (monitorSettings). Every
// server trusts local connections as user postgres; Stop removes every
// trace of the formation.
type Formation struct {
	dir     string // private temp dir: data directories, logs, sockets, pg_autoctl's files
	binDir  string
	autoctl string
	owner   *account // nil unless running as root
	logf    func(format string, args ...any)

	monitorPort int
	nodePorts   [formationNodes]int

	// mu guards the fields below and is held for the whole of Stop.
	mu       sync.Mutex
	stopped  bool
	procs    []*autoctlProc // running pg_autoctl processes, monitor first
	watchdog *watchdog
}

// autoctlProc is one running pg_autoctl.
type autoctlProc struct {
	name   string
	pgdata string
	cmd    *exec.Cmd
	log    *os.File
	exited chan struct{} // closed once cmd has been reaped
}

// FindAutoctl returns the path of pg_autoctl, after checking that the
// server of binDir has the pgautofailover extension; the error wraps
// ErrNoAutoFailover.
func FindAutoctl(binDir string) (string, error) {
	autoctl, err := exec.LookPath("pg_autoctl")
	if err != nil {
		autoctl = filepath.Join(binDir, "pg_autoctl")
		if !isExecutable(autoctl) {
			return "", fmt.Errorf("%w: no pg_autoctl on PATH or in %s", ErrNoAutoFailover, binDir)
		}
	}
	lib := filepath.Join(filepath.Dir(binDir), "lib", "pgautofailover.so")
	if _, err := os.Stat(lib); err != nil {
		return "", fmt.Errorf("%w: the server in %s has no pgautofailover extension (%s)", ErrNoAutoFailover, binDir, lib)
	}
	return autoctl, nil
}

// StartFormation creates and starts a formation and returns once the
// monitor reports a primary and a secondary. The caller must call Stop.
// An error wraps ErrNoServer or ErrNoAutoFailover when what it needs is
// not installed.
func StartFormation(opts FormationOptions) (*Formation, error) {
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	autoctl, err := FindAutoctl(binDir)
	if err != nil {
		return nil, err
	}
	f := &Formation{binDir: binDir, autoctl: autoctl, logf: opts.Logf}
	if f.logf == nil {
		f.logf = func(string, ...any) {}
	}
	if os.Geteuid() == 0 {
		f.owner = lookupNobody()
	}
	begin := time.Now()
	if err := f.setup(); err != nil {
		f.mu.Lock()
		err = errors.Join(err, f.teardown())
		f.mu.Unlock()
		return nil, err
	}
	f.logf("pgtest: pg_auto_failover formation ready in %v: monitor on port %d, nodes on %v",
		time.Since(begin).Round(time.Millisecond), f.monitorPort, f.nodePorts)
	return f, nil
}

func (f *Formation) setup() error {
	dir, err := os.MkdirTemp("", "pgtest-af-")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	f.dir = dir
	if f.owner != nil {
		s := &Server{owner: f.owner}
		if err := s.handOver(dir); err != nil {
			return err
		}
	}
	for _, sub := range []string{"config", "data", "run"} {
		if err := f.mkdir(filepath.Join(dir, sub)); err != nil {
			return err
		}
	}
	// Nodes first: the watchdog stops them before the monitor, as Stop does.
	var pidfiles []string
	for i := range formationNodes {
		pidfiles = append(pidfiles, f.autoctlPidfile(f.nodeDir(i)))
	}
	pidfiles = append(pidfiles, f.autoctlPidfile(f.monitorDir()))
	f.watchdog = startWatchdog(dir, pidfiles, f.logf)

	if err := f.startMonitor(); err != nil {
		return err
	}
	for i := range formationNodes {
		if err := f.startNode(i); err != nil {
			return err
		}
	}
	return nil
}

func (f *Formation) mkdir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if f.owner != nil {
		if err := os.Chown(path, int(f.owner.uid), int(f.owner.gid)); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
	}
	return nil
}

func (f *Formation) monitorDir() string   { return filepath.Join(f.dir, "monitor") }
func (f *Formation) nodeDir(i int) string { return filepath.Join(f.dir, "node"+strconv.Itoa(i+1)) }
func nodeName(i int) string               { return "node" + strconv.Itoa(i+1) }

// autoctlPidfile is where pg_autoctl keeps its pid, under
// XDG_RUNTIME_DIR (see command).
func (f *Formation) autoctlPidfile(pgdata string) string {
	return filepath.Join(f.dir, "run", "pg_autoctl", pgdata, "pg_autoctl.pid")
}

// command prepares a binary to run as the formation's owner. pg_autoctl
// keeps its configuration and state under the XDG directories and finds
// its local server through PGHOST and PGUSER.
func (f *Formation) command(log *os.File, path string, args ...string) *exec.Cmd {
	cmd := exec.Command(path, args...)
	cmd.Dir = f.dir
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = sysProcAttr(f.owner)
	cmd.Env = append(childEnv(),
		"HOME="+f.dir,
		"XDG_CONFIG_HOME="+filepath.Join(f.dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(f.dir, "data"),
		"XDG_RUNTIME_DIR="+filepath.Join(f.dir, "run"),
		"PGHOST="+f.dir,
		"PGUSER=postgres",
	)
	return cmd
}

func (f *Formation) openLog(name string) (*os.File, error) {
	log, err := os.OpenFile(filepath.Join(f.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if f.owner != nil {
		if err := os.Chown(log.Name(), int(f.owner.uid), int(f.owner.gid)); err != nil {
			_ = log.Close()
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	return log, nil
}

// initdb makes a cluster for pg_autoctl to adopt, so that its superuser
// is postgres, it trusts local connections, its socket is in f.dir and
// it runs with fsync off, as Start's servers do. postgresql.auto.conf
// wins over the configuration pg_autoctl writes; a secondary's base
// backup copies it.
func (f *Formation) initdb(log *os.File, pgdata string, settings map[string]string) error {
	cmd := f.command(log, filepath.Join(f.binDir, "initdb"), "-D", pgdata, "-U", "postgres", "-A", "trust", "--no-sync")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, tailOf(log.Name()))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "unix_socket_directories = '%s'\nfsync = off\n", f.dir)
	for name, value := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", name, value)
	}
	af, err := os.OpenFile(filepath.Join(pgdata, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = af.WriteString(b.String())
		err = errors.Join(err, af.Close())
	}
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

func (f *Formation) startMonitor() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	f.monitorPort = port
	log, err := f.openLog("monitor")
	if err != nil {
		return err
	}
	defer func() { _ = log.Close() }() // the processes have their own descriptors
	if err := f.initdb(log, f.monitorDir(), monitorSettings); err != nil {
		return err
	}
	create := f.command(log, f.autoctl, "create", "monitor",
		"--pgctl", filepath.Join(f.binDir, "pg_ctl"), "--pgdata", f.monitorDir(),
		"--pgport", strconv.Itoa(port), "--listen", "127.0.0.1", "--hostname", "127.0.0.1",
		"--auth", "trust", "--no-ssl")
	if err := create.Run(); err != nil {
		return fmt.Errorf("pgtest: pg_autoctl create monitor: %w\n%s", err, tailOf(log.Name()))
	}
	if err := f.start("monitor", f.monitorDir(), "run", "--pgdata", f.monitorDir()); err != nil {
		return err
	}
	return f.waitStates(nil)
}

// monitorURI is how the nodes reach the monitor.
func (f *Formation) monitorURI() string {
	return fmt.Sprintf("postgres://autoctl_node@127.0.0.1:%d/pg_auto_failover?sslmode=disable", f.monitorPort)
}

// monitorDSN is how the harness reads the monitor's view.
func (f *Formation) monitorDSN() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=pg_auto_failover sslmode=disable connect_timeout=5", f.monitorPort)
}

// startNode creates node i and waits for the monitor to report it: the
// first node becomes the single primary, the second its secondary, made
// by pg_autoctl with a base backup of the first.
func (f *Formation) startNode(i int) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	f.nodePorts[i] = port
	if i == 0 {
		log, err := f.openLog(nodeName(i))
		if err != nil {
			return err
		}
		err = f.initdb(log, f.nodeDir(i), nil)
		_ = log.Close()
		if err != nil {
			return err
		}
	}
	err = f.start(nodeName(i), f.nodeDir(i), "create", "postgres",
		"--pgctl", filepath.Join(f.binDir, "pg_ctl"), "--pgdata", f.nodeDir(i),
		"--pgport", strconv.Itoa(port), "--listen", "127.0.0.1", "--hostname", "127.0.0.1",
		"--name", nodeName(i), "--auth", "trust", "--no-ssl", "--monitor", f.monitorURI(), "--run")
	if err != nil {
		return err
	}
	want := map[string]string{nodeName(0): "single"}
	if i == 1 {
		want = map[string]string{nodeName(0): "primary", nodeName(1): "secondary"}
	}
	return f.waitStates(want)
}

// start runs pg_autoctl with args in the background.
func (f *Formation) start(name, pgdata string, args ...string) error {
	log, err := f.openLog(name)
	if err != nil {
		return err
	}
	cmd := f.command(log, f.autoctl, args...)
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("pgtest: start pg_autoctl %s: %w", name, err)
	}
	p := &autoctlProc{name: name, pgdata: pgdata, cmd: cmd, log: log, exited: make(chan struct{})}
	// Reaper: lets waitStates and stop notice the exit. It ends when
	// pg_autoctl exits, which stop (or the watchdog) ensures.
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	f.mu.Lock()
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	return nil
}

// waitStates waits until the monitor answers and reports each node of
// want in that state, reported and assigned alike. It fails early when a
// pg_autoctl exits.
func (f *Formation) waitStates(want map[string]string) error {
	db, err := sql.Open("postgres", f.monitorDSN())
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	deadline := time.Now().Add(formationTimeout)
	for {
		var states map[string][2]string
		states, err = nodeStates(db)
		if err == nil && statesReached(states, want) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("node states %v", states)
		}
		if p := f.exitedProc(); p != nil {
			return fmt.Errorf("pgtest: pg_autoctl %s exited while waiting for %v (%w)\n%s", p.name, want, err, tailOf(p.log.Name()))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: the formation did not reach %v within %v: %w", want, formationTimeout, err)
		}
		time.Sleep(formationPoll)
	}
}

// nodeStates reads the reported and assigned state of each node.
func nodeStates(db *sql.DB) (map[string][2]string, error) {
	rows, err := db.Query(`SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	states := map[string][2]string{}
	for rows.Next() {
		var name, reported, goal string
		if err := rows.Scan(&name, &reported, &goal); err != nil {
			return nil, err
		}
		states[name] = [2]string{reported, goal}
	}
	return states, rows.Err()
}

func statesReached(states map[string][2]string, want map[string]string) bool {
	for name, state := range want {
		if states[name] != [2]string{state, state} {
			return false
		}
	}
	return true
}

// exitedProc returns a pg_autoctl that exited, if any.
func (f *Formation) exitedProc() *autoctlProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.procs {
		select {
		case <-p.exited:
			return p
		default:
		}
	}
	return nil
}

// Ports returns the loopback TCP ports of the two nodes, the first
// primary first.
func (f *Formation) Ports() []int { return f.nodePorts[:] }

// DSN returns a multi-host key=value connection string naming both nodes
// with target_session_attrs=read-write, so that it reaches whichever is
// primary.
func (f *Formation) DSN() string {
	return fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres sslmode=disable target_session_attrs=read-write connect_timeout=5",
		f.nodePorts[0], f.nodePorts[1])
}

// NodeDSN returns the connection string of one node, by its port.
func (f *Formation) NodeDSN(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=5", port)
}

// Primary returns the port of the node the monitor reports as primary.
func (f *Formation) Primary(ctx context.Context) (int, error) {
	db, err := sql.Open("postgres", f.monitorDSN())
	if err != nil {
		return 0, fmt.Errorf("pgtest: %w", err)
	}
	defer func() { _ = db.Close() }()
	var port int
	err = db.QueryRowContext(ctx, `SELECT nodeport FROM pgautofailover.node
		WHERE reportedstate IN ('single', 'primary', 'wait_primary') AND goalstate = reportedstate`).Scan(&port)
	if err != nil {
		return 0, fmt.Errorf("pgtest: the monitor reports no primary: %w", err)
	}
	return port, nil
}

// KillPrimary kills the primary node as a crash of its machine would: its
// postgres gets an immediate shutdown and its pg_autoctl a SIGKILL, so
// nothing restarts it. It returns the dead node's port as soon as the port
// refuses connections (the postmaster exits a moment after the signal);
// promoting the secondary is the monitor's business.
func (f *Formation) KillPrimary(ctx context.Context) (int, error) {
	port, err := f.Primary(ctx)
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.nodePorts {
		if p != port {
			continue
		}
		proc := f.procByName(nodeName(i))
		if proc == nil {
			return 0, fmt.Errorf("pgtest: pg_autoctl of %s is not running", nodeName(i))
		}
		// The postmaster first: pg_autoctl would restart it. Its
		// immediate shutdown ends every session at once.
		if pid, err := postmasterPid(f.nodeDir(i)); err == nil {
			_ = quitPid(pid)
		}
		_ = killGroup(proc.cmd.Process)
		select {
		case <-proc.exited:
		case <-time.After(immediateStopTimeout):
			return 0, fmt.Errorf("pgtest: pg_autoctl of %s did not exit after SIGKILL", nodeName(i))
		}
		if err := waitPortClosed(port, immediateStopTimeout); err != nil {
			return 0, fmt.Errorf("pgtest: %s after its immediate shutdown: %w", nodeName(i), err)
		}
		return port, nil
	}
	return 0, fmt.Errorf("pgtest: the monitor's primary port %d is not a node of the formation", port)
}

// waitPortClosed waits until nothing accepts connections on port on
// loopback, for at most limit.
func waitPortClosed(port int, limit time.Duration) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(limit)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		_ = conn.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d still accepts connections after %v", port, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *Formation) procByName(name string) *autoctlProc {
	for _, p := range f.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func postmasterPid(pgdata string) (int, error) {
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

// Stop stops every node and the monitor and removes the formation's
// directory. It is safe to call more than once; later calls return nil.
func (f *Formation) Stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil
	}
	return f.teardown()
}

// teardown stops the nodes before the monitor, which would otherwise see
// them fail. Callers hold f.mu or own f exclusively.
func (f *Formation) teardown() error {
	f.stopped = true
	var err error
	for i := len(f.procs) - 1; i >= 0; i-- {
		err = errors.Join(err, f.stopProc(f.procs[i]))
	}
	f.procs = nil
	if f.dir != "" {
		if rmErr := os.RemoveAll(f.dir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("pgtest: %w", rmErr))
		}
	}
	f.watchdog.stop()
	f.watchdog = nil
	return err
}

// stopProc asks pg_autoctl to stop (it stops its postgres fast), then
// kills its process group and its postgres.
func (f *Formation) stopProc(p *autoctlProc) error {
	defer func() { _ = p.log.Close() }()
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = signalTerminate(p.cmd.Process)
	select {
	case <-p.exited:
		return nil
	case <-time.After(autoctlStopTimeout):
		f.logf("pgtest: pg_autoctl %s ignored SIGTERM for %v", p.name, autoctlStopTimeout)
	}
	if pid, err := postmasterPid(p.pgdata); err == nil {
		_ = quitPid(pid)
	}
	_ = killGroup(p.cmd.Process)
	select {
	case <-p.exited:
		return nil
	case <-time.After(immediateStopTimeout):
		return fmt.Errorf("pgtest: pg_autoctl %s (pid %d) did not exit even after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// tailOf returns the end of a log file, for error messages.
func tailOf(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
	}
	return string(b)
}
