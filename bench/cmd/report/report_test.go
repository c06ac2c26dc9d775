package main

import (
	"regexp"
	"strings"
	"testing"
)

const sampleOutput = `goos: linux
goarch: amd64
pkg: github.com/jsonstream/jsonstream/bench
BenchmarkStream/rows=1000/client=pgx-native-2    	     500	   2000000 ns/op	  24.72 MB/s	         0.01000 allocs/row	   1243 cpu-ns/row	   150000 ns/first-row	    500000 rows/s	   680 B/op	      10 allocs/op
BenchmarkStream/rows=1000/client=libpq           	     400	   2500000 ns/op	  20.00 MB/s	         1.016 allocs/row	   1300 cpu-ns/row	   160000 ns/first-row	    400000 rows/s	 24560 B/op	    1016 allocs/op
PASS
ok  	github.com/jsonstream/jsonstream/bench	2.910s
`

func TestAddBench(t *testing.T) {
	r := newResults()
	n, err := r.addBench([]byte(sampleOutput))
	if err != nil || n != 2 {
		t.Fatalf("addBench = %d, %v; want 2 results", n, err)
	}
	// The GOMAXPROCS suffix goes; a hyphen inside the name stays.
	if v, ok := r.median("Stream/rows=1000/client=pgx-native", "rows/s"); !ok || v != 500000 {
		t.Errorf("pgx-native rows/s = %v, %v", v, ok)
	}
	if v, ok := r.median("Stream/rows=1000/client=libpq", "allocs/row"); !ok || v != 1.016 {
		t.Errorf("libpq allocs/row = %v, %v", v, ok)
	}
	if _, err := r.addBench([]byte("BenchmarkX-2 10 5 ns/op 7\n")); err == nil {
		t.Error("a line with a value and no unit was accepted")
	}
}

func TestStat(t *testing.T) {
	r := newResults()
	for _, v := range []float64{9, 10, 12, 100, 11} {
		r.add("b", "u", v)
	}
	s, ok := r.stat("b", "u")
	if !ok || s.median != 11 || s.n != 5 || s.spread != (100-9)/11.0 {
		t.Errorf("stat = %+v, %v", s, ok)
	}
	r.add("even", "u", 1)
	r.add("even", "u", 3)
	if m, _ := r.median("even", "u"); m != 2 {
		t.Errorf("median of 1 and 3 = %v", m)
	}
	if _, ok := r.stat("missing", "u"); ok {
		t.Error("stat of nothing reported ok")
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
	}
	want := map[string][]string{
		"Stream jsonstream":               {names[0]},
		"Stream pgx-native":               {names[1]},
		"Decode jsonstream":               {names[3]},
		"Decode jsonstream-each":          {names[4]},
		"Overhead jsonstream":             {names[5]},
		"EarlyClose libpq":                {names[7]},
		"Ceiling":                         {names[8]},
		"NDJSON jsonstream-raw":           {names[9]},
		"Overhead jsonstream-paused-once": {names[6]},
		"EarlyClose jsonstream":           nil,
		"EarlyCloseNext jsonstream":       {names[10]},
		"Churn jsonstream-cursor-1000":    {names[12]},
		"Fetch jsonstream-cursor-auto":    {names[13]},
		"SelectOne libpq":                 {names[14], names[15]},
		"Proxy jsonstream-cursor-auto":    {names[16], names[17]},
		"Proxy jsonstream":                {names[18]},
		"TypedDecode raw":                 {names[19]},
		"TypedDecode encoding-json":       {names[20]},
		"TypedDecode sonic":               {names[21]},
	}
	seen := map[string]bool{}
	for _, j := range jobs(0) {
		if j.bench == "" {
			continue
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
// slower": a loss beyond noise and the spread is listed plainly, one
// within the spread is marked, a win or a tie is not listed.
func TestSlowerFindings(t *testing.T) {
	r := &report{res: newResults()}
	add := func(name, unit string, vs ...float64) {
		for _, v := range vs {
			r.res.add(name, unit, v)
		}
	}
	add("ours", "rows/s", 80, 80, 80)
	add("theirs", "rows/s", 100, 100, 100)
	add("ours", "ns/op", 100, 101, 102)
	add("theirs", "ns/op", 50, 80, 150)
	add("ours", "allocs/row", 1, 1, 1)
	add("theirs", "allocs/row", 1.01, 1.01, 1.01)
	r.compare("vs x", "a", "ours", "theirs", "rows/s", higherIsBetter, rate)
	r.compare("vs x", "b", "ours", "theirs", "ns/op", lowerIsBetter, duration)
	r.compare("vs x", "c", "ours", "theirs", "allocs/row", lowerIsBetter, allocCount)
	if len(r.slower) != 2 {
		t.Fatalf("findings %+v, want 2", r.slower)
	}
	if f := r.slower[0]; f.noisy || !strings.Contains(f.text, "25.0% worse") {
		t.Errorf("rows/s finding %+v", f)
	}
	if f := r.slower[1]; !f.noisy {
		t.Errorf("ns/op finding within the spread not marked: %+v", f)
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
	add(churnName("jsonstream"), "queries/s", 300)
	add(churnName("jsonstream-cursor-auto"), "queries/s", 3500)
	add(churnName("jsonstream-cursor-auto"), "sessions/s", 0)
	add(churnName("jsonstream-cursor-1000"), "queries/s", 3500)
	add(churnName("jsonstream-cursor-1000"), "sessions/s", 0.5)
	add(fetchName(1_000_000, "jsonstream"), "rows/s", 400_000)
	add(fetchName(1_000_000, "jsonstream-cursor-auto"), "rows/s", 390_000)
	add(fetchName(100_000, "jsonstream"), "rows/s", 400_000)
	add(fetchName(100_000, "jsonstream-cursor-auto"), "rows/s", 370_000)
	for _, kind := range []string{"background", "cancel"} {
		add(selectOneName(kind, "libpq"), "ns/op", 100)
		add(selectOneName(kind, "libpq"), "cpu-ns/op", 100)
		add(selectOneName(kind, "jsonstream"), "ns/op", 101)
	}
	add(selectOneName("background", "jsonstream"), "cpu-ns/op", 101)
	add(selectOneName("cancel", "jsonstream"), "cpu-ns/op", 110)
	var b strings.Builder
	r.cursor(&b)
	out := b.String()
	for _, want := range []string{
		"no new session: met (1.50 ms, 0 new sessions per query)",
		"FetchAuto **not met** (6.00 ms)",
		"FetchAuto met (11.67×, 0 new sessions/s); jsonstream cursor, fetch 1000 **not met** (11.67×, 0.50 new sessions/s)",
		"100,000 rows **not met** (0.93×); 1,000,000 rows met (0.97×)",
		"background context met (time 1.01×, CPU 1.01×); cancel context **not met** (time 1.01×, CPU 1.10×)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
}
