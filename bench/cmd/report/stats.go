package main

import (
	"fmt"
	"math"
	"slices"

	"golang.org/x/perf/benchmath"
)

// The report's statistics are benchstat's: golang.org/x/perf/benchmath
// with no assumption about the distribution of the rounds. A figure is
// the median of its rounds with a 95% confidence interval; two figures
// differ when a Mann-Whitney U test says so at alpha 0.05.

// assumption is benchstat's default: medians, and the U test.
var assumption = benchmath.AssumeNothing

// confidence is the level of every interval the report prints.
const confidence = 0.95

// thresholds holds the alpha of every comparison, benchmath's default.
var thresholds = &benchmath.DefaultThresholds

// Rounds the statistics need, from benchmath's tables: a 95% interval of
// the median is finite from 6 rounds on (with 5 the chance that the
// median lies outside [min, max] is already 1/16), and two samples of 4
// can differ at alpha 0.05 (the least p of the U test is then 2/70); the
// interval excludes the extreme rounds from 9 on.
const (
	roundsForInterval = 6
	roundsForCompare  = 4
	defaultRounds     = roundsForInterval
)

// minUTestP is the least p-value the U test gives two samples of n
// rounds each, their values all apart: 2/C(2n, n).
func minUTestP(n int) float64 {
	c := 1.0
	for i := 1; i <= n; i++ {
		c = c * float64(n+i) / float64(i)
	}
	return 2 / c
}

// summary is one figure over the rounds.
type summary struct {
	benchmath.Summary
	// n is the number of rounds.
	n int
}

// interval formats the confidence interval as benchstat does: the larger
// of its distances from the median, in percent of it; ±∞ with too few
// rounds to bound it.
func (s summary) interval() string {
	if s.n < 2 {
		return ""
	}
	return "±" + s.PctRangeString()
}

// sample returns the rounds of one figure as a benchmath sample, which
// sorts its values: they are copied first.
func (r *results) sample(name, unit string) (*benchmath.Sample, bool) {
	vs := r.samples[name][unit]
	if len(vs) == 0 {
		return nil, false
	}
	return benchmath.NewSample(slices.Clone(vs), thresholds), true
}

func (r *results) summary(name, unit string) (summary, bool) {
	s, ok := r.sample(name, unit)
	if !ok {
		return summary{}, false
	}
	return summary{Summary: assumption.Summary(s, confidence), n: len(s.Values)}, true
}

// median is the center of summary, with ok false when nothing was
// measured.
func (r *results) median(name, unit string) (float64, bool) {
	s, ok := r.summary(name, unit)
	return s.Center, ok
}

// comparison is one figure against another: the ratio of their medians
// and whether the rounds tell them apart.
type comparison struct {
	ours, theirs summary
	test         benchmath.Comparison
}

// compare runs the U test on two figures, ours and theirs.
func (r *results) compare(ours, theirs, unit string) (comparison, bool) {
	a, ok1 := r.sample(ours, unit)
	t, ok2 := r.sample(theirs, unit)
	if !ok1 || !ok2 {
		return comparison{}, false
	}
	return comparison{
		ours:   summary{Summary: assumption.Summary(a, confidence), n: len(a.Values)},
		theirs: summary{Summary: assumption.Summary(t, confidence), n: len(t.Values)},
		test:   assumption.Compare(a, t),
	}, true
}

// significant reports whether the rounds of the two sides differ at the
// test's alpha.
func (c comparison) significant() bool { return c.test.P < c.test.Alpha }

// ratio is ours' median over theirs', or NaN against zero.
func (c comparison) ratio() float64 {
	if c.theirs.Center == 0 {
		return math.NaN()
	}
	return c.ours.Center / c.theirs.Center
}

// pValue formats the U test's p-value.
func (c comparison) pValue() string { return fmt.Sprintf("p=%.3f", c.test.P) }

// String is the ratio with the test's verdict: "0.93× (p=0.002)" for a
// significant difference, "1.02× ~ (p=0.310)" for none, as benchstat
// writes a delta or ~.
func (c comparison) String() string {
	s := "–"
	if v := c.ratio(); !math.IsNaN(v) {
		s = ratio(v)
	}
	if c.significant() {
		return s + " (" + c.pValue() + ")"
	}
	return s + " ~ (" + c.pValue() + ")"
}
