//go:build unix

package pgtest

import (
	"os"
	"syscall"
)

// sysProcAttr puts a child in its own process group, so that terminal
// signals reach only us (we decide how the server stops) and killGroup can
// reach the server's backends too. With owner set the child runs as that
// account with no supplementary groups.
func sysProcAttr(owner *account) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if owner != nil {
		attr.Credential = &syscall.Credential{Uid: owner.uid, Gid: owner.gid, Groups: []uint32{}}
	}
	return attr
}

// signalFast requests PostgreSQL's fast shutdown.
func signalFast(p *os.Process) error { return p.Signal(syscall.SIGINT) }

// signalImmediate requests PostgreSQL's immediate shutdown.
func signalImmediate(p *os.Process) error { return p.Signal(syscall.SIGQUIT) }

// signalTerminate asks for PgBouncer's immediate shutdown.
func signalTerminate(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

// killGroup kills the postmaster and every backend it left behind; the
// postmaster leads its own group (see sysProcAttr).
func killGroup(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }

// quitPid requests the immediate shutdown of the postmaster pid, one
// started by another process (pg_autoctl).
func quitPid(pid int) error { return syscall.Kill(pid, syscall.SIGQUIT) }
