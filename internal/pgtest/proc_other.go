//go:build !unix

package pgtest

import (
	"os"
	"syscall"
)

// sysProcAttr has nothing to add where there are no process groups and
// no need to drop root.
func sysProcAttr(*account) *syscall.SysProcAttr { return nil }

// signalFast has no gentle equivalent here.
func signalFast(p *os.Process) error { return p.Kill() }

// signalImmediate has no gentle equivalent here.
func signalImmediate(p *os.Process) error { return p.Kill() }

// signalTerminate has no gentle equivalent here.
func signalTerminate(p *os.Process) error { return p.Kill() }

// killGroup can only reach the postmaster here.
func killGroup(p *os.Process) error { return p.Kill() }

// quitPid ends the process pid.
func quitPid(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
