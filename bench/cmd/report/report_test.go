package main

import (
	"fmt"
	"math"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jsonstream/jsonstream/bench"
)

// sampleOutput is go test -bench output, with the GOMAXPROCS suffix go
// test puts on names when GOMAXPROCS is not 1.
var sampleOutput = fmt.Sprintf(`goos: linux
goarch: amd64
pkg: github.com/jsonstream/jsonstream/bench
BenchmarkStream/rows=1000/client=pgx-native%[1]s    	     500	   2000000 ns/op	  24.72 MB/s	         0.01000 allocs/row	   1243 cpu-ns/row	   150000 ns/first-row	    500000 rows/s	   680 B/op	      10 allocs/op
BenchmarkStream/rows=1000/client=libpq           	     400	   2500000 ns/op	  20.00 MB/s	         1.016 allocs/row	   1300 cpu-ns/row	   160000 ns/first-row	    400000 rows/s	 24560 B/op	    1016 allocs/op
BenchmarkChurn/client=jsonstream-cursor-1000    	       1	4000000000 ns/op	       549.0 queries/s
PASS
ok  	github.com/jsonstream/jsonstream/bench	2.910s
`, procsSuffix())

func procsSuffix() string {
	if p := runtime.GOMAXPROCS(0); p != 1 {
		return "-" + strconv.Itoa(p)
	}
	return ""
}

func TestAddBench(t *testing.T) {
	r := newResults()
	n, err := r.addBench([]byte(sampleOutput), "")
	if err != nil || n != 3 {
		t.Fatalf("addBench = %d, %v; want 3 results", n, err)
	}
	// The GOMAXPROCS suffix goes; a hyphen inside the name stays, and so
	// does a number at the end of a name without the suffix.
	if v, ok := r.median("Stream/rows=1000/client=pgx-native", "rows/s"); !ok || v != 500000 {
		t.Errorf("pgx-native rows/s = %v, %v", v, ok)
	}
	if v, ok := r.median("Stream/rows=1000/client=libpq", "allocs/row"); !ok || v != 1.016 {
		t.Errorf("libpq allocs/row = %v, %v", v, ok)
	}
	if v, ok := r.median("Churn/client=jsonstream-cursor-1000", "queries/s"); !ok || v != 549 {
		t.Errorf("cursor-1000 queries/s = %v, %v", v, ok)
	}
	// Units stay as the benchmarks print them, not as benchfmt tidies them.
	if v, ok := r.median("Stream/rows=1000/client=libpq", "ns/op"); !ok || v != 2500000 {
		t.Errorf("libpq ns/op = %v, %v", v, ok)
	}
	if _, err := r.addBench([]byte("BenchmarkX-2 10 5 ns/op 7\n"), ""); err == nil {
		t.Error("a line with a value and no unit was accepted")
	}
	if _, err := r.addBench([]byte(sampleOutput), jsonv2Prefix); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.median(jsonv2Prefix+"Stream/rows=1000/client=libpq", "rows/s"); !ok {
		t.Error("no result under the prefix")
	}
}

// TestStatistics checks the figures and comparisons benchmath makes of
// known rounds.
func TestStatistics(t *testing.T) {
	base := []float64{100, 101, 99, 102, 98, 100, 103, 97}
	for _, c := range []struct {
		name         string
		ours, theirs []float64
		// significant is the U test's verdict at alpha 0.05.
		significant bool
		// finite says whether ours' interval is bounded.
		finite bool
	}{
		{"same rounds", base, base, false, true},
		{"equal distributions, interleaved", []float64{100, 102, 98, 101, 99, 100}, []float64{101, 99, 100, 102, 98, 100}, false, true},
		{"shifted by 10%", []float64{110, 111, 109, 112, 108, 110}, []float64{100, 101, 99, 102, 98, 100}, true, true},
		{"shifted by 1%, 8 rounds apart", []float64{101.5, 101.6, 101.7, 101.8, 101.9, 102, 102.1, 102.2}, []float64{100, 100.1, 100.2, 100.3, 100.4, 100.5, 100.6, 100.7}, true, true},
		{"shifted by 2×, with an outlier, 6 rounds: too few", []float64{200, 210, 190, 205, 195, 90}, []float64{100, 105, 95, 102, 98, 101}, false, true},
		{"shifted by 2×, with an outlier, 8 rounds", []float64{200, 210, 190, 205, 195, 90, 202, 198}, []float64{100, 105, 95, 102, 98, 101, 99, 103}, true, true},
		{"shifted by 2×, with an outlier on each side", []float64{200, 210, 190, 205, 195, 90}, []float64{100, 105, 95, 102, 98, 220}, false, true},
		{"identical constants", []float64{8, 8, 8, 8, 8, 8}, []float64{8, 8, 8, 8, 8, 8}, false, true},
		{"constants apart", []float64{8, 8, 8, 8, 8, 8}, []float64{7, 7, 7, 7, 7, 7}, true, true},
		{"far apart, 3 rounds: too few to tell", []float64{200, 201, 202}, []float64{100, 101, 102}, false, false},
		{"far apart, 4 rounds: enough to tell, not to bound", []float64{200, 201, 202, 203}, []float64{100, 101, 102, 103}, true, false},
		{"overlapping by half", []float64{100, 101, 102, 103, 104, 105}, []float64{103, 104, 105, 106, 107, 108}, true, true},
		{"overlapping but for one round", []float64{100, 101, 102, 103, 104, 105}, []float64{101, 102, 103, 104, 105, 106}, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newResults()
			for _, v := range c.ours {
				r.add("ours", "u", v)
			}
			for _, v := range c.theirs {
				r.add("theirs", "u", v)
			}
			cmp, ok := r.compare("ours", "theirs", "u")
			if !ok {
				t.Fatal("compare found nothing")
			}
			if cmp.significant() != c.significant {
				t.Errorf("significant = %v (%s), want %v", cmp.significant(), cmp.test, c.significant)
			}
			if s := cmp.String(); strings.Contains(s, "~") == c.significant {
				t.Errorf("cell %q: ~ must mark exactly the differences that are not significant", s)
			}
			s, _ := r.summary("ours", "u")
			sorted := slices.Sorted(slices.Values(c.ours))
			if want := median(sorted); s.Center != want {
				t.Errorf("median %v, want %v", s.Center, want)
			}
			if s.Lo > s.Center || s.Center > s.Hi {
				t.Errorf("interval [%v, %v] does not contain the median %v", s.Lo, s.Hi, s.Center)
			}
			if finite := !math.IsInf(s.Lo, 0) && !math.IsInf(s.Hi, 0); finite != c.finite {
				t.Errorf("interval [%v, %v]: finite %v, want %v", s.Lo, s.Hi, finite, c.finite)
			}
			if c.finite && (s.Lo < sorted[0] || s.Hi > sorted[len(sorted)-1]) {
				t.Errorf("interval [%v, %v] beyond the rounds %v", s.Lo, s.Hi, sorted)
			}
			if !c.finite && s.interval() != "±∞" {
				t.Errorf("unbounded interval printed as %q", s.interval())
			}
			// The samples sorted by benchmath are copies.
			if got := r.samples["ours"]["u"]; !slices.Equal(got, c.ours) {
				t.Errorf("rounds reordered: %v", got)
			}
		})
	}
	if _, ok := r0().summary("missing", "u"); ok {
		t.Error("summary of nothing reported ok")
	}
	if _, ok := r0().compare("missing", "other", "u"); ok {
		t.Error("compare of nothing reported ok")
	}
}

func r0() *results { return newResults() }

// median is the textbook median of sorted values.
func median(sorted []float64) float64 {
	k := len(sorted)
	if k%2 == 1 {
		return sorted[k/2]
	}
	return (sorted[k/2-1] + sorted[k/2]) / 2
}

// TestRounds checks the round counts the report promises against
// benchmath: the default bounds every interval and can separate two
// figures, one round fewer cannot bound one, and roundsForCompare is the
// least that can separate two.
func TestRounds(t *testing.T) {
	apart := func(n int) (ours, theirs []float64) {
		for i := range n {
			ours = append(ours, float64(100+i))
			theirs = append(theirs, float64(200+i))
		}
		return ours, theirs
	}
	check := func(n int) (finite, significant bool) {
		r := newResults()
		ours, theirs := apart(n)
		for i := range n {
			r.add("a", "u", ours[i])
			r.add("b", "u", theirs[i])
		}
		c, _ := r.compare("a", "b", "u")
		return !math.IsInf(c.ours.Lo, 0) && !math.IsInf(c.ours.Hi, 0), c.significant()
	}
	if finite, significant := check(defaultRounds); !finite || !significant {
		t.Errorf("%d rounds: finite interval %v, significant %v", defaultRounds, finite, significant)
	}
	if finite, _ := check(roundsForInterval - 1); finite {
		t.Errorf("%d rounds bound the interval: roundsForInterval is too high", roundsForInterval-1)
	}
	if _, significant := check(roundsForCompare); !significant {
		t.Errorf("%d rounds cannot tell two figures apart", roundsForCompare)
	}
	if _, significant := check(roundsForCompare - 1); significant {
		t.Errorf("%d rounds tell two figures apart: roundsForCompare is too high", roundsForCompare-1)
	}
	for n, want := range map[int]float64{4: 2.0 / 70, 6: 2.0 / 924} {
		if got := minUTestP(n); math.Abs(got-want) > 1e-12 {
			t.Errorf("minUTestP(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestRotate(t *testing.T) {
	names := []string{"a", "b", "c"}
	for round, want := range []string{"abc", "bca", "cab", "abc"} {
		if got := strings.Join(rotate(names, round), ""); got != want {
			t.Errorf("round %d: %s, want %s", round, got, want)
		}
	}
}

// matchesBench applies a -test.bench pattern as go test does: one regular
// expression per level of the name.
func matchesBench(pattern, name string) bool {
	pats, parts := strings.Split(pattern, "/"), strings.Split(name, "/")
	for i, p := range pats {
		if i >= len(parts) {
			return true
		}
		if !regexp.MustCompile(p).MatchString(parts[i]) {
			return false
		}
	}
	return true
}

// TestJobsSelectOneClient checks that each job's pattern runs its own
// client's benchmarks and no other client's.
func TestJobsSelectOneClient(t *testing.T) {
	names := []string{
		"BenchmarkStream/rows=1000/client=jsonstream",
		"BenchmarkStream/rows=1000000/client=pgx-native",
		"BenchmarkStream/rows=1000/client=pgx-stdlib",
		"BenchmarkDecode/client=jsonstream",
		"BenchmarkDecode/client=jsonstream-each",
		"BenchmarkOverhead/rows=100/jsonstream",
		"BenchmarkOverhead/rows=1/jsonstream-paused-once",
		"BenchmarkEarlyClose/client=libpq",
		"BenchmarkCeiling/rows=1000/method=copy",
		"BenchmarkNDJSON/client=jsonstream-raw",
		"BenchmarkEarlyCloseNext/client=jsonstream",
		"BenchmarkEarlyCloseNext/client=jsonstream-cursor-auto",
		"BenchmarkChurn/client=jsonstream-cursor-1000",
		"BenchmarkFetch/rows=1000/client=jsonstream-cursor-auto",
		"BenchmarkSelectOne/ctx=cancel/client=libpq",
		"BenchmarkSelectOne/ctx=background/client=libpq",
		"BenchmarkProxy/rows=10000/client=jsonstream-cursor-auto",
		"BenchmarkProxy/early-close/client=jsonstream-cursor-auto",
		"BenchmarkProxy/early-close/client=jsonstream",
		"BenchmarkTypedDecode/decoder=raw",
		"BenchmarkTypedDecode/decoder=encoding-json",
		"BenchmarkTypedDecode/decoder=sonic",
		"BenchmarkOverhead/rows=1/jsonstream-observed",
		"BenchmarkOverhead/rows=100/jsonstream-observed-paused-once",
		"BenchmarkObserveStream/query",
		"BenchmarkObserveStream/pause",
		"BenchmarkTypedDecode/decoder=json-v2",
		"BenchmarkEarlyCloseBegin/client=jsonstream",
		"BenchmarkEarlyCloseBegin/client=jsonstream-single",
		"BenchmarkQueryRowPaired/query=select1",
		"BenchmarkQueryRowPaired/query=select1-tx",
		"BenchmarkQueryRow/client=jsonstream",
		"BenchmarkEarlyCloseTx/client=jsonstream-single",
		"BenchmarkQueryRowNull/query=select1",
	}
	want := map[string][]string{
		"Stream jsonstream":                        {names[0]},
		"Stream pgx-native":                        {names[1]},
		"Decode jsonstream":                        {names[3]},
		"Decode jsonstream-each":                   {names[4]},
		"Overhead jsonstream":                      {names[5]},
		"EarlyClose libpq":                         {names[7]},
		"Ceiling":                                  {names[8]},
		"NDJSON jsonstream-raw":                    {names[9]},
		"Overhead jsonstream-paused-once":          {names[6]},
		"EarlyClose jsonstream":                    nil,
		"EarlyCloseNext jsonstream":                {names[10]},
		"Churn jsonstream-cursor-1000":             {names[12]},
		"Fetch jsonstream-cursor-auto":             {names[13]},
		"SelectOne libpq":                          {names[14], names[15]},
		"Proxy jsonstream-cursor-auto":             {names[16], names[17]},
		"Proxy jsonstream":                         {names[18]},
		"TypedDecode raw":                          {names[19]},
		"TypedDecode encoding-json":                {names[20]},
		"TypedDecode sonic":                        {names[21]},
		"Overhead jsonstream-observed":             {names[22]},
		"Observer otel":                            {names[24], names[25]},
		"TypedDecode jsonv2 sonic":                 {names[21]},
		"TypedDecode jsonv2 json-v2":               {names[26]},
		"Overhead jsonstream-observed-paused-once": {names[23]},
		"EarlyCloseBegin jsonstream":               {names[27]},
		"EarlyCloseBegin jsonstream-single":        {names[28]},
		"QueryRowPaired select1":                   {names[29]},
		"QueryRowPaired select1-tx":                {names[30]},
		"QueryRow jsonstream":                      {names[31]},
		"EarlyCloseTx jsonstream-single":           {names[32]},
		"QueryRowNull":                             {names[33]},
	}
	seen := map[string]bool{}
	for _, j := range jobs(0) {
		if j.bench == "" {
			continue
		}
		// Only the paired benchmark runs several rounds in a process, and
		// it must: a round of it is one run.
		if paired := strings.HasPrefix(j.label, "QueryRowPaired ") || j.label == "QueryRowNull"; paired != (j.count == bench.PairedRounds && j.benchtime == bench.PairedBenchtime) ||
			!paired && (j.count != 0 || j.benchtime != "") {
			t.Errorf("%s: count %d, benchtime %q", j.label, j.count, j.benchtime)
		}
		var got []string
		for _, n := range names {
			if matchesBench(j.bench, n) {
				got = append(got, n)
			}
		}
		if w, ok := want[j.label]; ok {
			seen[j.label] = true
			if strings.Join(got, ",") != strings.Join(w, ",") {
				t.Errorf("%s (%s) runs %v, want %v", j.label, j.bench, got, w)
			}
		}
	}
	for label := range want {
		if !seen[label] {
			t.Errorf("no job %q", label)
		}
	}
}

// TestSlowerFindings checks the comparison behind "Where jsonstream is
// slower": a worse median the U test finds significant is listed plainly,
// one it does not is marked noisy with both intervals, and a win or a tie
// is not listed.
func TestSlowerFindings(t *testing.T) {
	r := &report{res: newResults()}
	add := func(name, unit string, vs ...float64) {
		for _, v := range vs {
			r.res.add(name, unit, v)
		}
	}
	add("ours", "rows/s", 80, 81, 79, 80, 82, 78)
	add("theirs", "rows/s", 100, 101, 99, 100, 102, 98)
	add("ours", "ns/op", 100, 101, 102, 99, 103, 98)
	add("theirs", "ns/op", 50, 80, 150, 120, 90, 60)
	add("ours", "allocs/row", 1, 1, 1, 1, 1, 1)
	add("theirs", "allocs/row", 1.01, 1.01, 1.01, 1.01, 1.01, 1.01)
	add("ours", "allocs/op", 8, 8, 8, 8, 8, 8)
	add("theirs", "allocs/op", 7, 7, 7, 7, 7, 7)
	r.compare("vs x", "a", "ours", "theirs", "rows/s", higherIsBetter, rate)
	r.compare("vs x", "b", "ours", "theirs", "ns/op", lowerIsBetter, duration)
	r.compare("vs x", "c", "ours", "theirs", "allocs/row", lowerIsBetter, allocCount)
	r.compare("vs x", "d", "ours", "theirs", "allocs/op", lowerIsBetter, allocCount)
	if len(r.slower) != 3 {
		t.Fatalf("findings %+v, want 3", r.slower)
	}
	if f := r.slower[0]; f.noisy || !strings.Contains(f.text, "(25.0% worse, p=0.00") {
		t.Errorf("rows/s finding %+v", f)
	}
	if f := r.slower[1]; !f.noisy || !strings.Contains(f.text, "; intervals ±") {
		t.Errorf("ns/op finding the test cannot tell from noise: %+v", f)
	}
	if f := r.slower[2]; f.noisy || !strings.Contains(f.text, "(+1.00 per query, p=0.00") {
		t.Errorf("allocs/op finding %+v", f)
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{count(1000000), "1,000,000"},
		{count(999), "999"},
		{rate(441234), "441.2k"},
		{rate(1.5e6), "1.50M"},
		{duration(2.29e9), "2.29 s"},
		{duration(5.22e6), "5.22 ms"},
		{duration(993), "993 ns"},
		{ratio(0.987), "0.99×"},
		{ratio(0.0012), "0.0012×"},
		{rate(0.4321), "0.43"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// TestCursorGoals checks the verdicts of the cursor section against
// results on either side of each goal.
func TestCursorGoals(t *testing.T) {
	r := &report{cfg: config{rows: 1_000_000, count: 1}, res: newResults()}
	add := func(name, unit string, v float64) { r.res.add(name, unit, v) }
	add(earlyNextName("jsonstream-cursor-auto"), "ns/op", 1.5e6)
	add(earlyNextName("jsonstream-cursor-auto"), "sessions/op", 0)
	add(earlyTxName("jsonstream-cursor-auto"), "ns/op", 6e6)
	add(churnName("jsonstream-single"), "queries/s", 300)
	add(churnName("jsonstream-cursor-auto"), "queries/s", 3500)
	add(churnName("jsonstream-cursor-auto"), "sessions/s", 0)
	add(churnName("jsonstream-cursor-1000"), "queries/s", 3500)
	add(churnName("jsonstream-cursor-1000"), "sessions/s", 0.5)
	add(fetchName(1_000_000, "jsonstream-single"), "rows/s", 400_000)
	add(fetchName(1_000_000, "jsonstream-cursor-auto"), "rows/s", 390_000)
	add(fetchName(100_000, "jsonstream-single"), "rows/s", 400_000)
	add(fetchName(100_000, "jsonstream-cursor-auto"), "rows/s", 370_000)
	for _, kind := range []string{"background", "cancel"} {
		add(selectOneName(kind, "libpq"), "ns/op", 100)
		add(selectOneName(kind, "libpq"), "cpu-ns/op", 100)
		add(selectOneName(kind, "jsonstream-single"), "ns/op", 101)
		// The default mode's figures do not decide this goal.
		add(selectOneName(kind, "jsonstream"), "ns/op", 200)
		add(selectOneName(kind, "jsonstream"), "cpu-ns/op", 200)
	}
	add(selectOneName("background", "jsonstream-single"), "cpu-ns/op", 101)
	add(selectOneName("cancel", "jsonstream-single"), "cpu-ns/op", 110)
	var b strings.Builder
	r.cursor(&b)
	out := b.String()
	for _, want := range []string{
		"no new session: met (1.50 ms, 0 new sessions per query)",
		"FetchAuto **not met** (6.00 ms)",
		"FetchAuto met (11.67× ~ (p=1.000), 0 new sessions/s); jsonstream cursor, fetch 1000 **not met** (11.67× ~ (p=1.000), 0.50 new sessions/s)",
		"100,000 rows **not met** (0.93× ~ (p=1.000)); 1,000,000 rows met (0.97× ~ (p=1.000))",
		"background context met (time 1.01× ~ (p=1.000), CPU 1.01× ~ (p=1.000)); cancel context **not met** (time 1.01× ~ (p=1.000), CPU 1.10× ~ (p=1.000))",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

// TestMarkdownSections checks that the report writes every section of
// RESULTS.md, in order, from results alone: none is left to a hand.
func TestMarkdownSections(t *testing.T) {
	r := &report{
		cfg:     config{rows: 1_000_000, count: defaultRounds, benchtime: "1s", ownServer: true},
		machine: &machine{cpu: "test", cores: 2, docs: 1_000_000, docBytes: 284, postgres: "15"},
		res:     newResults(),
		jsonv2:  true,
	}
	add := func(name string, units ...string) {
		for i := range defaultRounds {
			for _, u := range units {
				r.res.add(name, u, float64(100+i))
			}
		}
	}
	for _, n := range []int{1, 100} {
		for _, v := range append(slices.Clone(overheadVariants), observerVariants...) {
			add(overheadName(n, v), "ns/op", "cpu-ns/op", "B/op", "allocs/op")
		}
	}
	add(observeName("query"), "cpu-ns/op", "allocs/op")
	add(observeName("pause"), "cpu-ns/op", "allocs/op")
	for _, n := range bench.Sizes {
		for _, c := range clientNames() {
			add(streamName(n, c), "rows/s", "MB/s", "ns/first-row", "cpu-ns/row", "allocs/row")
		}
		add(ceilingName(n, "copy"), "rows/s", "MB/s")
		add(ceilingName(n, "pgconn"), "rows/s", "MB/s", "cpu-ns/row")
	}
	for _, c := range clientNames() {
		add(earlyName(c), "ns/op", "ns/close")
		add(peakName(c), unitHeapPeak, unitRSSPeak, unitRSSStart, unitSeconds)
	}
	for _, c := range decodeClients {
		add(decodeName(c), "rows/s", "cpu-ns/row", "allocs/row")
	}
	for _, v := range ndjsonVariants {
		add(ndjsonName(v), "rows/s", "cpu-ns/row", "allocs/row")
	}
	for _, d := range typedDecoders() {
		add(typedName(d), "rows/s", "cpu-ns/row", "allocs/row", "B/row")
	}
	for _, d := range typedDecodersV2() {
		add(typedNameV2(d), "rows/s", "cpu-ns/row", "allocs/row", "B/row")
	}
	for _, c := range bench.EarlyCloseNextClients {
		add(earlyNextName(c), "ns/op", "ns/close", "ns/next", "sessions/op")
	}
	for _, c := range bench.EarlyCloseTxClients {
		add(earlyTxName(c), "ns/op", "ns/close", "sessions/op")
	}
	for _, c := range bench.EarlyCloseBeginClients {
		add(earlyBeginName(c), "ns/op", "ns/close", "sessions/op")
	}
	for _, q := range bench.PairedQueries {
		add(pairedName(q), "time-ratio", "cpu-ratio", "libpq-ns/query", "libpq-cpu-ns/query", "jsonstream-ns/query", "jsonstream-cpu-ns/query")
	}
	for _, c := range bench.ChurnClients {
		add(churnName(c), "queries/s", "sessions/s")
	}
	for _, c := range bench.FetchClients {
		for _, n := range bench.FetchSizes {
			add(fetchName(n, c), "rows/s", "cpu-ns/row", "server-cpu-ns/row", "allocs/row")
		}
		add(queryRowName(c), "ns/op", "cpu-ns/op", "allocs/op")
	}
	for _, c := range bench.SelectOneClients {
		add(selectOneName("background", c), "ns/op", "cpu-ns/op", "allocs/op")
		add(selectOneName("cancel", c), "ns/op", "cpu-ns/op", "allocs/op")
	}
	for _, c := range bench.ProxyClients {
		for _, n := range bench.FetchSizes {
			add(proxyName(n, c), "rows/s", "cpu-ns/row")
		}
		add(proxyEarlyName(c), "ns/op", "ns/close", "ns/next", "sessions/op")
	}
	out := string(r.markdown())
	if testing.Verbose() {
		t.Log(out)
	}
	at := 0
	for _, want := range []string{
		"# jsonstream benchmarks", "## Summary", "## Machine and versions", "## Per-query overhead",
		"## Observer", "| 1 | jsonstream-observed |", "`BenchmarkObserveStream` (jsonstreamotel module)",
		"## Streaming", "## Ceiling", "## Early close", "## Peak memory", "## Decoding into a Go struct",
		"## NDJSON", "## Typed decoding", "| Each[T], sonic |", "GOEXPERIMENT=jsonv2", "| Each[T], encoding/json/v2 |",
		"## Portal mode (the default)", "| figure | goal | measured | ratio | verdict |", "`BenchmarkQueryRowPaired`",
		"## Cursor mode", "### Early close, then the next query", "### Early close inside a transaction",
		"### Early close inside a transaction begun with Exec(\"BEGIN\")",
		"### Churn", "### Complete results", "Server CPU per row", "### A one-row query", "### QueryRow(\"SELECT 1\") in the default mode",
		"### Through a network with a 2 ms round trip", "## Where jsonstream is slower", "## Statistics",
		"## How to reproduce",
	} {
		i := strings.Index(out[at:], want)
		if i < 0 {
			t.Errorf("no %q after byte %d", want, at)
			continue
		}
		at += i + len(want)
	}
	for _, bad := range []string{"NaN", "Inf", "±∞", "%!", "Not part of the run"} {
		if strings.Contains(out, bad) {
			t.Errorf("report holds %q", bad)
		}
	}
	// Every figure was measured in the same rounds: each ratio carries the
	// U test's p-value.
	if !strings.Contains(out, "1.00× ~ (p=1.000)") {
		t.Error("no ratio with its p-value")
	}
}

// TestPortalGoals checks the verdicts of the portal section against
// results on either side of each goal, and the summary's count of them.
func TestPortalGoals(t *testing.T) {
	r := &report{cfg: config{rows: 1_000_000, count: 1}, res: newResults()}
	add := func(name, unit string, vs ...float64) {
		for _, v := range vs {
			r.res.add(name, unit, v)
		}
	}
	const js, lib, auto = bench.Jsonstream, bench.LibPQ, bench.JsonstreamCursorAuto
	add(fetchName(1_000_000, lib), "rows/s", 400_000)
	add(fetchName(1_000_000, js), "rows/s", 395_000)
	add(fetchName(1_000_000, lib), "cpu-ns/row", 1000)
	add(fetchName(1_000_000, js), "cpu-ns/row", 1030)
	add(fetchName(1_000_000, lib), "server-cpu-ns/row", 2000)
	add(fetchName(1_000_000, js), "server-cpu-ns/row", 2000)
	add(fetchName(1_000_000, lib), "allocs/row", 1)
	add(fetchName(1_000_000, js), "allocs/row", 0)
	add(proxyName(1_000_000, lib), "rows/s", 300_000)
	add(proxyName(1_000_000, js), "rows/s", 280_000)
	add(windowName(js), "server-wait-%", 1.2, 1.5, 1.4)
	add(windowName(lib), "server-wait-%", 0.1)
	add(windowName(auto), "server-wait-%", 52)
	add(earlyNextName(js), "ns/op", 0.25e6)
	add(earlyNextName(js), "sessions/op", 0)
	add(earlyTxName(js), "ns/op", 0.35e6)
	add(earlyTxName(js), "sessions/op", 0)
	add(earlyBeginName(js), "ns/op", 0.2e6)
	add(earlyBeginName(js), "sessions/op", 1)
	add(proxyEarlyName(js), "ns/op", 8.2e6)
	add(churnName(js), "queries/s", 3000)
	add(churnName(js), "sessions/s", 0)
	add(churnName(auto), "queries/s", 2500)
	// 21 paired rounds each: a spread around the median, which the
	// interval shows.
	paired := func(q, unit string, median float64) {
		for i := range bench.PairedRounds {
			add(pairedName(q), unit, median+float64(i-bench.PairedRounds/2)*0.01)
		}
	}
	paired(bench.PairedSelectOne, "time-ratio", 1.6)
	paired(bench.PairedSelectOne, "cpu-ratio", 1.9)
	paired(bench.PairedArg, "time-ratio", 1.01)
	paired(bench.PairedArg, "cpu-ratio", 1.02)
	paired(bench.PairedSelectOneTx, "time-ratio", 0.98)
	paired(bench.PairedSelectOneTx, "cpu-ratio", 1.08)
	// A lookup is measured, not judged: it counts in no goal.
	paired(bench.PairedLookupLiteral, "time-ratio", 1.9)
	paired(bench.PairedLookupLiteral, "cpu-ratio", 1.5)
	var b strings.Builder
	r.portal(&b)
	out := b.String()
	verdictOf := func(figure string) string {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "| "+figure) {
				cells := strings.Split(strings.Trim(line, "| "), " | ")
				return cells[len(cells)-1]
			}
		}
		t.Errorf("no row %q in\n%s", figure, out)
		return ""
	}
	for figure, want := range map[string]string{
		"Draining 1,000,000 rows, loopback":                  "met",
		"… client CPU per row":                               "**not met**",
		"… server CPU per row":                               "met",
		"… allocations per row":                              "met",
		"Draining 1,000,000 rows through the proxy":          "**not met**",
		"… the server waiting for the next Execute":          "met",
		"Closing after 1 row of 1,000,000":                   "met",
		"… inside `BeginTx`":                                 "**not met**",
		"… after `Exec(\"BEGIN\")`":                          "**not met**",
		"… the same through the proxy":                       "met",
		"4 workers":                                          "met",
		"`QueryRow(\"SELECT 1\")`, autocommit":               "**not met**",
		"`QueryRow(\"SELECT $1::int\", n)`, autocommit":      "met",
		"`QueryRow(\"SELECT 1\")` inside `BeginTx`":          "**not met**",
		"`QueryRow(\"SELECT id FROM entity WHERE id = 1\")`": "–",
	} {
		if got := verdictOf(figure); got != want {
			t.Errorf("%s: verdict %q, want %q", figure, got, want)
		}
	}
	for _, want := range []string{
		"4.1 round trips of 2.00 ms",
		"time 1.60× (95%: 1.55×–1.65×); CPU 1.90× (95%: 1.85×–1.95×)",
		"medians of 21 rounds",
		"8 of the 14 goals judged were met on this run.",
		"1.4% of samples; lib/pq 0.1%; jsonstream cursor, FetchAuto 52.0%",
		"asks for the whole result with its Sync",
		"a result its text does not bound: measured, not a goal",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	var sum strings.Builder
	r.portalSummary(&sum)
	if want := "8 of 14 goals met; not met: drain client CPU, proxy drain rows/s, early close in BeginTx, " +
		"early close after Exec(BEGIN), QueryRow(\"SELECT 1\") in autocommit, QueryRow(\"SELECT 1\") in a transaction"; !strings.Contains(sum.String(), want) {
		t.Errorf("summary %q, want %q", sum.String(), want)
	}
	// A paired ratio above 1 is a finding, significant when its interval
	// lies above 1: the argument's, whose interval holds 1, is noisy.
	var paired1 int
	for _, f := range r.slower {
		if !strings.Contains(f.text, "paired ratios") {
			continue
		}
		if strings.Contains(f.text, "$1::int") {
			if !f.noisy {
				t.Errorf("finding %+v: its interval holds 1", f)
			}
			continue
		}
		paired1++
		if f.noisy {
			t.Errorf("finding %+v: its interval lies above 1", f)
		}
	}
	if paired1 != 5 {
		t.Errorf("%d findings of paired ratios, want 5 (SELECT 1's time and CPU, the transaction's CPU, the lookup's time and CPU)", paired1)
	}
}

// TestPortalWithoutServerCPU checks that a run whose server backends could
// not be read says so instead of judging the goal.
func TestPortalWithoutServerCPU(t *testing.T) {
	r := &report{cfg: config{rows: 100_000, count: 1}, res: newResults()}
	r.res.add(fetchName(100_000, bench.Jsonstream), "rows/s", 1)
	r.res.add(fetchName(100_000, bench.LibPQ), "rows/s", 1)
	var b strings.Builder
	r.portal(&b)
	out := b.String()
	for _, want := range []string{"Draining 100,000 rows, loopback", "not measured: the server's backends are not readable", "1 of the 1 goals judged"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}

// TestPortalNullPairing checks the sentence on the paired method's own
// bias and noise: it gives the median and interval of the null pairing's
// ratios (BenchmarkQueryRowNull) when they were measured, and is absent
// when they were not.
func TestPortalNullPairing(t *testing.T) {
	render := func(null bool) string {
		r := &report{cfg: config{rows: 1_000_000, count: 1}, res: newResults()}
		for i := range bench.PairedRounds {
			spread := float64(i-bench.PairedRounds/2) * 0.01
			r.res.add(pairedName(bench.PairedSelectOne), "time-ratio", 1.04+spread)
			r.res.add(pairedName(bench.PairedSelectOne), "cpu-ratio", 1.05+spread)
			if null {
				r.res.add(nullName, "time-ratio", 1.00+spread)
				r.res.add(nullName, "cpu-ratio", 0.99+spread)
			}
		}
		var b strings.Builder
		r.portal(&b)
		return b.String()
	}
	if out := render(false); strings.Contains(out, "BenchmarkQueryRowNull") {
		t.Errorf("a null pairing that was not measured is reported:\n%s", out)
	}
	out := render(true)
	for _, want := range []string{
		"lib/pq on both sides (`BenchmarkQueryRowNull`, `QueryRow(\"SELECT 1\")`, 21 runs): " +
			"time 1.00× (95%: 0.95×–1.05×), client CPU 0.99× (95%: 0.94×–1.04×).",
		"the bias and the noise of the method and the machine",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}
