package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrNoServer reports that no PostgreSQL server binaries were found.
// FindBinDir and Start wrap it, so callers test for it with errors.Is.
var ErrNoServer = errors.New("pgtest: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found")

// InstallHint tells a person how to make the server binaries available.
const InstallHint = "PostgreSQL server binaries (initdb, pg_ctl, postgres) are needed for the integration tests. " +
	"Install them with `apt-get install postgresql` on Debian/Ubuntu (the binaries land in /usr/lib/postgresql/<version>/bin, " +
	"which is searched automatically) or `brew install postgresql@16` on macOS, " +
	"or set JSONSTREAM_TEST_DSN to the DSN of an existing server."

// serverBinaries must all sit in one directory: initdb locates postgres
// next to itself, so a split installation would fail later and less clearly.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// searchGlobs are the well-known install locations tried after PATH and
// pg_config. A variable so tests can point the search at an empty place.
var searchGlobs = []string{
	"/usr/lib/postgresql/*/bin",
	"/usr/local/pgsql/bin",
	"/opt/homebrew/opt/postgresql*/bin",
	"/usr/local/opt/postgresql*/bin",
}

// FindBinDir returns the directory holding initdb, pg_ctl and postgres.
// It tries PATH, then `pg_config --bindir`, then the usual install
// locations (newest version first). When nothing is found the error wraps
// ErrNoServer and lists what was tried.
func FindBinDir() (string, error) {
	var tried []string

	if p, err := exec.LookPath("initdb"); err == nil {
		// PATH often holds symlinks into the real bin directory (and the
		// real one is what initdb itself uses), so prefer the resolved one.
		for _, dir := range pathCandidates(p) {
			if hasServerBinaries(dir) {
				return dir, nil
			}
			tried = append(tried, dir)
		}
	} else {
		tried = append(tried, "PATH")
	}

	if dir, ok := pgConfigBinDir(); ok {
		if hasServerBinaries(dir) {
			return dir, nil
		}
		tried = append(tried, dir+" (pg_config --bindir)")
	}

	for _, pattern := range searchGlobs {
		matches, _ := filepath.Glob(pattern)
		sortNewestFirst(matches)
		for _, dir := range matches {
			if hasServerBinaries(dir) {
				return dir, nil
			}
		}
		tried = append(tried, pattern)
	}

	return "", fmt.Errorf("%w; searched %s", ErrNoServer, strings.Join(tried, ", "))
}

func pathCandidates(initdb string) []string {
	dirs := []string{}
	if resolved, err := filepath.EvalSymlinks(initdb); err == nil {
		dirs = append(dirs, filepath.Dir(resolved))
	}
	if d := filepath.Dir(initdb); !slices.Contains(dirs, d) {
		dirs = append(dirs, d)
	}
	return dirs
}

// pgConfigBinDir asks pg_config; on Debian it may come from libpq-dev alone
// and name a directory without a server, hence the caller's check.
func pgConfigBinDir() (string, bool) {
	p, err := exec.LookPath("pg_config")
	if err != nil {
		return "", false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--bindir").Output()
	if err != nil {
		return "", false
	}
	dir := strings.TrimSpace(string(out))
	return dir, dir != ""
}

func hasServerBinaries(dir string) bool {
	for _, name := range serverBinaries {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// sortNewestFirst orders glob matches by the version numbers embedded in
// them, so /usr/lib/postgresql/16/bin beats .../9.6/bin (a plain string
// sort would not) and an unversioned Homebrew formula comes last.
func sortNewestFirst(dirs []string) {
	slices.SortStableFunc(dirs, func(a, b string) int {
		return slices.Compare(versionOf(b), versionOf(a))
	})
}

func versionOf(path string) []int {
	var v []int
	for _, f := range strings.FieldsFunc(path, func(r rune) bool { return r < '0' || r > '9' }) {
		n, err := strconv.Atoi(f)
		if err == nil {
			v = append(v, n)
		}
	}
	return v
}
