// Command report runs the benchmarks of the bench module repeatedly and
// writes RESULTS.md: jsonstream against lib/pq, pgx through database/sql
// and pgx native, on one dataset, with the medians of interleaved runs.
//
//	go run ./cmd/report [-dsn DSN] [-rows 1000000] [-count 5] [-out RESULTS.md]
//
// Without -dsn it starts a throwaway PostgreSQL server (internal/pgtest)
// and removes it at the end. It loads the dataset once (internal/dataset),
// builds the benchmark binaries once (the bench module's, again under
// GOEXPERIMENT=jsonv2 for the typed decoders, and the jsonstreamotel module's for
// the observer), and then, in each of -count rounds, runs every benchmark
// for one client at a time in a process of its own, rotating the order of
// the clients from round to round, so that a drift of the machine during
// the run (another load, a warming cache) is spread over all clients
// instead of falling on whichever ran last. The exception is
// BenchmarkQueryRowPaired, whose point is to run lib/pq and jsonstream in
// one process, back to back: each of its runs is a round with a ratio of
// its own, bench.PairedRounds of them per process.
//
// Every figure is the median of the rounds with its 95% confidence
// interval, and every comparison a Mann-Whitney U test, both from
// golang.org/x/perf/benchmath (stats.go).
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/lib/pq"

	"github.com/jsonstream/jsonstream/bench"
	"github.com/jsonstream/jsonstream/internal/dataset"
	"github.com/jsonstream/jsonstream/internal/pgtest"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.dsn, "dsn", "", "lib/pq DSN of the server to use (default: start a throwaway one)")
	flag.IntVar(&cfg.rows, "rows", bench.DefaultRows, "documents in the dataset: the largest result streamed")
	flag.IntVar(&cfg.count, "count", defaultRounds, "rounds: runs of every benchmark per client, whose median is reported (at least 6 for a finite 95% interval, 4 for a significant difference)")
	flag.StringVar(&cfg.out, "out", "RESULTS.md", "file to write the report to")
	flag.StringVar(&cfg.benchtime, "benchtime", "1s", "go test -benchtime for each benchmark run")
	only := flag.String("only", "", "run only the jobs whose label matches this regular expression, such as 'Churn|Fetch' (the report then holds only their numbers)")
	peakClient := flag.String("peak-child", "", "internal: stream -rows documents with this client and print its peak memory")
	flag.Parse()
	if flag.NArg() > 0 || cfg.rows < 1 || cfg.count < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintln(os.Stderr, "report: -only:", err)
			os.Exit(2)
		}
		cfg.only = re
	}

	var err error
	if *peakClient != "" {
		err = peakChild(*peakClient, cfg.dsn, cfg.rows)
	} else {
		err = run(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

type config struct {
	dsn       string
	rows      int
	count     int
	out       string
	benchtime string
	// only, when set, selects the jobs to run by their label.
	only *regexp.Regexp
	// ownServer is set when the report started the server itself.
	ownServer bool
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(cfg config) error {
	began := time.Now()
	dir, err := moduleDir()
	if err != nil {
		return err
	}
	if cfg.dsn == "" {
		srv, err := pgtest.Start(pgtest.Options{Logf: logf})
		if err != nil {
			if errors.Is(err, pgtest.ErrNoServer) {
				return fmt.Errorf("%w\n%s\nor pass -dsn", err, pgtest.InstallHint)
			}
			return err
		}
		defer func() { _ = srv.Stop() }() // a throwaway server; the report is what matters
		defer srv.StopOnSignal()()
		cfg.dsn, cfg.ownServer = srv.DSN(), true
	}

	ctx := context.Background()
	db, err := sql.Open("postgres", cfg.dsn)
	if err != nil {
		return err
	}
	defer func() { _ = db.Close() }()
	if err := loadDataset(ctx, db, cfg.rows); err != nil {
		return err
	}
	machine, err := describe(ctx, db, cfg.rows)
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "jsonstream-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }() // in the temp dir: the system cleans up what is left
	bins, err := buildBinaries(dir, tmp)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	r := &runner{cfg: cfg, dir: dir, bins: bins, self: self, results: newResults()}
	for round := 0; round < cfg.count; round++ {
		start := time.Now()
		for _, j := range jobs(round) {
			if cfg.only != nil && !cfg.only.MatchString(j.label) {
				continue
			}
			if _, ok := bins[j.binary]; !ok && j.peak == "" {
				continue // a build this machine cannot make; logged once
			}
			if err := r.run(j, round); err != nil {
				return err
			}
		}
		logf("round %d/%d took %v", round+1, cfg.count, time.Since(start).Round(time.Second))
	}

	rep := &report{cfg: cfg, machine: machine, res: r.results, took: time.Since(began), loads: r.loads, jsonv2: bins[binJSONv2].path != ""}
	if err := writeAtomic(cfg.out, rep.markdown()); err != nil {
		return err
	}
	logf("wrote %s in %v", cfg.out, time.Since(began).Round(time.Second))
	return nil
}

// moduleDir returns the bench module's directory, where the benchmarks
// are built, whatever directory the command runs in.
func moduleDir() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run this command inside the bench module (cd bench)")
	}
	return filepath.Dir(gomod), nil
}

func loadDataset(ctx context.Context, db *sql.DB, rows int) error {
	have, err := dataset.Loaded(ctx, db, dataset.DefaultTable)
	if err != nil {
		return err
	}
	if have >= rows {
		logf("dataset: %d documents already loaded", have)
		return nil
	}
	logf("dataset: loading %d documents", rows)
	start := time.Now()
	return dataset.Load(ctx, db, dataset.DefaultTable, rows, func(done int) {
		logf("dataset: %d/%d after %v", done, rows, time.Since(start).Round(time.Second))
	})
}

// binary names a test binary of the run.
type binary string

const (
	// binBench holds the bench module's benchmarks.
	binBench binary = "bench"
	// binJSONv2 holds them built with GOEXPERIMENT=jsonv2, for the typed
	// decoders; only its TypedDecode results are used.
	binJSONv2 binary = "jsonv2"
	// binOtel holds the jsonstreamotel module's, for the observer's cost.
	binOtel binary = "otel"
)

// testBinary is a built test binary.
type testBinary struct {
	path string
	// dir is its module's directory, where it runs.
	dir string
	// prefix goes before the names of its results, to tell them from
	// those of the same benchmarks in another build.
	prefix string
}

// jsonv2Prefix names the results of binJSONv2.
const jsonv2Prefix = "jsonv2/"

// buildBinaries builds the test binaries into tmp. The bench module's must
// build; a Go without the jsonv2 experiment, or a repository without the
// jsonstreamotel module, only loses its sections, with a line in the log.
func buildBinaries(dir, tmp string) (map[binary]testBinary, error) {
	bins := map[binary]testBinary{}
	build := func(b binary, modDir string, env ...string) error {
		path := filepath.Join(tmp, string(b)+".test")
		logf("building the benchmarks: %s", b)
		cmd := exec.Command("go", "test", "-c", "-o", path, ".")
		cmd.Dir, cmd.Stdout, cmd.Stderr = modDir, os.Stderr, os.Stderr
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go test -c (%s): %w", b, err)
		}
		bins[b] = testBinary{path: path, dir: modDir}
		return nil
	}
	if err := build(binBench, dir); err != nil {
		return nil, err
	}
	if experimentJSONv2() {
		logf("GOEXPERIMENT has jsonv2 already: the typed decoders run once, under it")
	} else {
		exp := "jsonv2"
		if cur := os.Getenv("GOEXPERIMENT"); cur != "" {
			exp += "," + cur
		}
		if err := build(binJSONv2, dir, "GOEXPERIMENT="+exp); err != nil {
			logf("no encoding/json/v2 run: %v", err)
		} else {
			b := bins[binJSONv2]
			b.prefix = jsonv2Prefix
			bins[binJSONv2] = b
		}
	}
	otel := filepath.Join(dir, "..", "jsonstreamotel")
	if _, err := os.Stat(filepath.Join(otel, "go.mod")); err != nil {
		logf("no jsonstreamotel module beside the bench module: the observer section goes without the OpenTelemetry figures")
	} else if err := build(binOtel, otel); err != nil {
		return nil, err
	}
	return bins, nil
}

// experimentJSONv2 reports whether this process, and so the benchmarks it
// builds by default, has GOEXPERIMENT=jsonv2.
func experimentJSONv2() bool {
	for _, d := range bench.Decoders {
		if d.Name == bench.JSONv2 {
			return true
		}
	}
	return false
}

// job is one process of a round: a benchmark for one client, or the peak
// memory of one client.
type job struct {
	label string
	// binary runs the benchmark.
	binary binary
	// bench is the -test.bench pattern; empty for a peak-memory job.
	bench string
	// peak is the client whose peak memory the job measures.
	peak string
	// count and benchtime, when set, replace go test's -count 1 and the
	// report's -benchtime: for a benchmark whose every run is a round of
	// its own (BenchmarkQueryRowPaired).
	count     int
	benchtime string
}

// Variants of BenchmarkOverhead and BenchmarkDecode and BenchmarkNDJSON
// beyond bench.Clients; the names are those the benchmarks use.
var (
	overheadVariants = []string{"inner", "jsonstream", "jsonstream-stream-arg", "jsonstream-context-stream", "jsonstream-context-options", "jsonstream-paused-once"}
	// observerVariants are the Overhead variants with an Observer, in the
	// Observer section beside their unobserved twins.
	observerVariants = []string{"jsonstream-observed", "jsonstream-observed-paused-once"}
	decodeClients    = append(clientNames(), "jsonstream-each")
	ndjsonVariants   = []string{"jsonstream-writendjson", "jsonstream-raw"}
)

// typedDecoders are the variants of BenchmarkTypedDecode: the raw drain,
// then bench.Decoders (with encoding/json/v2 when the report runs under
// GOEXPERIMENT=jsonv2, which the benchmarks it builds then share).
func typedDecoders() []string {
	names := []string{bench.RawDrain}
	for _, d := range bench.Decoders {
		names = append(names, d.Name)
	}
	return names
}

// typedDecodersV2 are the variants of BenchmarkTypedDecode in binJSONv2.
func typedDecodersV2() []string {
	names := typedDecoders()
	if !experimentJSONv2() {
		names = append(names, bench.JSONv2)
	}
	return names
}

func clientNames() []string {
	var names []string
	for _, c := range bench.Clients {
		names = append(names, c.Name)
	}
	return names
}

// rotate returns names starting at the round-th, wrapping around.
func rotate[T any](names []T, round int) []T {
	k := round % len(names)
	return append(append([]T(nil), names[k:]...), names[:k]...)
}

// jobs returns the processes of one round, in order.
func jobs(round int) []job {
	var js []job
	addBin := func(bin binary, family string, names []string, pattern func(string) string) {
		for _, n := range rotate(names, round) {
			js = append(js, job{label: family + " " + n, binary: bin, bench: pattern(n)})
		}
	}
	add := func(family string, names []string, pattern func(string) string) {
		addBin(binBench, family, names, pattern)
	}
	quote := func(s string) string { return "^" + regexp.QuoteMeta(s) + "$" }
	// The observed variants rotate with the others, their references.
	add("Overhead", append(slices.Clone(overheadVariants), observerVariants...), func(v string) string {
		return "^BenchmarkOverhead$/^rows=/" + quote(v)
	})
	js = append(js, job{label: "Observer otel", binary: binOtel, bench: "^BenchmarkObserveStream$"})
	add("Stream", clientNames(), func(c string) string { return "^BenchmarkStream$/^rows=/" + quote("client="+c) })
	js = append(js, job{label: "Ceiling", binary: binBench, bench: "^BenchmarkCeiling$"})
	add("EarlyClose", clientNames(), func(c string) string { return "^BenchmarkEarlyClose$/" + quote("client="+c) })
	add("Decode", decodeClients, func(c string) string { return "^BenchmarkDecode$/" + quote("client="+c) })
	add("NDJSON", ndjsonVariants, func(c string) string { return "^BenchmarkNDJSON$/" + quote("client="+c) })
	// Both builds' decoders rotate together, so that the v2 figures can
	// be set beside the others.
	typed := func(d string) string { return "^BenchmarkTypedDecode$/" + quote("decoder="+d) }
	var both []job
	for _, d := range typedDecoders() {
		both = append(both, job{label: "TypedDecode " + d, binary: binBench, bench: typed(d)})
	}
	for _, d := range typedDecodersV2() {
		both = append(both, job{label: "TypedDecode jsonv2 " + d, binary: binJSONv2, bench: typed(d)})
	}
	js = append(js, rotate(both, round)...)
	// The cursor modes' comparisons, each next to its references in the
	// same round.
	add("EarlyCloseNext", bench.EarlyCloseNextClients, func(c string) string { return "^BenchmarkEarlyCloseNext$/" + quote("client="+c) })
	add("EarlyCloseTx", bench.EarlyCloseTxClients, func(c string) string { return "^BenchmarkEarlyCloseTx$/" + quote("client="+c) })
	add("EarlyCloseBegin", bench.EarlyCloseBeginClients, func(c string) string { return "^BenchmarkEarlyCloseBegin$/" + quote("client="+c) })
	add("Churn", bench.ChurnClients, func(c string) string { return "^BenchmarkChurn$/" + quote("client="+c) })
	add("Fetch", bench.FetchClients, func(c string) string { return "^BenchmarkFetch$/^rows=/" + quote("client="+c) })
	add("QueryRow", bench.FetchClients, func(c string) string { return "^BenchmarkQueryRow$/" + quote("client="+c) })
	add("SelectOne", bench.SelectOneClients, func(c string) string { return "^BenchmarkSelectOne$/^ctx=/" + quote("client="+c) })
	// Both clients of a paired query run in one process, each run of it a
	// round with its own ratio; so do the two lib/pq sides of the method's
	// null pairing. Their order rotates.
	paired := make([]job, 0, len(bench.PairedQueries)+1)
	for _, q := range bench.PairedQueries {
		paired = append(paired, job{label: "QueryRowPaired " + q, binary: binBench,
			bench: "^BenchmarkQueryRowPaired$/" + quote("query="+q), count: bench.PairedRounds, benchtime: bench.PairedBenchtime})
	}
	paired = append(paired, job{label: "QueryRowNull", binary: binBench,
		bench: "^BenchmarkQueryRowNull$/" + quote("query="+bench.PairedSelectOne), count: bench.PairedRounds, benchtime: bench.PairedBenchtime})
	js = append(js, rotate(paired, round)...)
	// The drains and the early close of one client share a process, and so
	// its proxy's warm-up; the level between is rows=N or early-close.
	add("Proxy", bench.ProxyClients, func(c string) string { return "^BenchmarkProxy$//" + quote("client="+c) })
	add("ProxyWindow", bench.ProxyWindowClients, func(c string) string { return "^BenchmarkProxyWindow$/" + quote("client="+c) })
	for _, c := range rotate(clientNames(), round) {
		js = append(js, job{label: "Peak memory " + c, peak: c})
	}
	return js
}

type runner struct {
	cfg     config
	dir     string
	bins    map[binary]testBinary
	self    string
	results *results
	// loads are the 1-minute load averages seen before each job: the
	// report says how busy the machine was while it measured.
	loads []float64
}

func (r *runner) run(j job, round int) error {
	if l, ok := loadAverage(); ok {
		r.loads = append(r.loads, l)
	}
	start := time.Now()
	var cmd *exec.Cmd
	bin := r.bins[j.binary]
	if j.peak != "" {
		cmd = exec.Command(r.self, "-peak-child", j.peak, "-dsn", r.cfg.dsn, "-rows", strconv.Itoa(r.cfg.rows))
		cmd.Dir = r.dir
	} else {
		count, benchtime := 1, r.cfg.benchtime
		if j.count > 0 {
			count = j.count
		}
		if j.benchtime != "" {
			benchtime = j.benchtime
		}
		cmd = exec.Command(bin.path, "-test.run", "^$", "-test.bench", j.bench,
			"-test.benchtime", benchtime, "-test.count", strconv.Itoa(count), "-test.timeout", "30m")
		cmd.Dir = bin.dir
	}
	cmd.Env = append(os.Environ(), bench.EnvDSN+"="+r.cfg.dsn, bench.EnvRows+"="+strconv.Itoa(r.cfg.rows))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("round %d, %s: %w\n%s", round+1, j.label, err, out)
	}
	var n int
	if j.peak != "" {
		n, err = r.results.addPeak(j.peak, out)
	} else {
		n, err = r.results.addBench(out, bin.prefix)
	}
	if err != nil {
		return fmt.Errorf("round %d, %s: %w\n%s", round+1, j.label, err, out)
	}
	if n == 0 {
		return fmt.Errorf("round %d, %s: no result in the output:\n%s", round+1, j.label, out)
	}
	logf("round %d/%d: %s (%v)", round+1, r.cfg.count, j.label, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// loadAverage returns the 1-minute load average of the machine.
func loadAverage() (float64, bool) {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 0, false
	}
	l, err := strconv.ParseFloat(fields[0], 64)
	return l, err == nil
}

// writeAtomic replaces path with data, so that an interrupted run leaves
// the previous report whole.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "RESULTS.tmp*")
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(f.Name()) // the error above is the one to report
		return err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		_ = os.Remove(f.Name()) // the error above is the one to report
		return err
	}
	return os.Rename(f.Name(), path)
}
