//go:build !windows && !plan9

package jsonstream

import (
	"os"
	"syscall"

	"github.com/lib/pq"
)

// keyPermissions applies lib/pq's rule to the client key file: readable
// and writable by its owner only (0600), or also readable by the group
// (0640) when root owns it. The errors are lib/pq's own.
func keyPermissions(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&^os.FileMode(0o600) == 0 {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return pq.ErrSSLKeyUnknownOwnership
	}
	if st.Uid == 0 && fi.Mode().Perm()&^os.FileMode(0o640) == 0 {
		return nil
	}
	return pq.ErrSSLKeyHasWorldPermissions
}
