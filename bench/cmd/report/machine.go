package main

import (
	"bufio"
	"context"
	"database/sql"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/jsonstream/jsonstream/internal/dataset"
)

// machine is what the numbers were measured on and with.
type machine struct {
	cpu        string
	cores      int
	memory     uint64 // bytes; 0 when unknown
	os         string
	goVersion  string
	postgres   string // SHOW server_version
	postgresV  string // SELECT version()
	buffers    string // shared_buffers
	drivers    []module
	docs       int
	docBytes   float64 // average text size of a document
	datasetMiB float64 // size of the table with its index
}

type module struct{ path, version string }

func describe(ctx context.Context, db *sql.DB, rows int) (*machine, error) {
	m := &machine{
		cpu:       cpuModel(),
		cores:     runtime.NumCPU(),
		os:        runtime.GOOS + "/" + runtime.GOARCH,
		goVersion: runtime.Version(),
		drivers:   drivers(),
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.os += ", kernel " + strings.TrimSpace(string(out))
	}
	if kb, ok := meminfo("MemTotal"); ok {
		m.memory = kb << 10
	}
	if err := db.QueryRowContext(ctx, "SHOW server_version").Scan(&m.postgres); err != nil {
		return nil, err
	}
	if err := db.QueryRowContext(ctx, "SELECT version()").Scan(&m.postgresV); err != nil {
		return nil, err
	}
	if err := db.QueryRowContext(ctx, "SHOW shared_buffers").Scan(&m.buffers); err != nil {
		return nil, err
	}
	var size int64
	err := db.QueryRowContext(ctx,
		"SELECT count(*), avg(octet_length(data::text)), pg_total_relation_size($1::regclass) FROM ("+
			dataset.Select(dataset.DefaultTable, rows)+") s", dataset.DefaultTable).Scan(&m.docs, &m.docBytes, &size)
	if err != nil {
		return nil, err
	}
	m.datasetMiB = float64(size) / (1 << 20)
	return m, nil
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer func() { _ = f.Close() }() // read only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// meminfo returns a field of /proc/meminfo, in kB.
func meminfo(field string) (uint64, bool) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	defer func() { _ = f.Close() }() // read only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb, err == nil
		}
	}
	return 0, false
}

// drivers returns the versions of the drivers and JSON decoders compiled
// into this binary, which are those of the benchmarks (both come from the
// bench module), and of the statistics.
func drivers() []module {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	var mods []module
	for _, d := range info.Deps {
		switch d.Path {
		case "github.com/jsonstream/jsonstream":
			mods = append(mods, module{d.Path, "this repository at " + revision()})
		case "github.com/lib/pq", "github.com/jackc/pgx/v5", "github.com/bytedance/sonic", "github.com/goccy/go-json", "golang.org/x/perf":
			mods = append(mods, module{d.Path, d.Version})
		}
	}
	return mods
}

// revision names the commit of the working tree the library was built
// from, and says whether it had uncommitted changes.
func revision() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty=+uncommitted changes", "--abbrev=12").Output()
	if err != nil {
		return "an unknown commit"
	}
	rev := strings.TrimSpace(string(out))
	if base, ok := strings.CutSuffix(rev, "+uncommitted changes"); ok {
		return "commit " + base + " with uncommitted changes"
	}
	return "commit " + rev
}
