package main

import (
	"fmt"
	"io"
	"time"
)

// plainEvery spaces out the progress lines of output that is not a
// terminal, so a log gets a line a second rather than a flood.
const plainEvery = time.Second

// printer keeps the progress line on stderr and the narration on stdout
// from garbling each other. It is used from one goroutine only. Its
// write errors are dropped: a terminal that fails a write leaves nowhere
// better to report it.
type printer struct {
	stdout, stderr io.Writer
	// live is set when stderr is a terminal: the progress line is then
	// rewritten in place instead of printed once a second.
	live bool
	// open is set while a live progress line is on screen without its
	// newline; last is its text.
	open      bool
	last      string
	lastPlain time.Time
}

func newPrinter(stdout, stderr io.Writer) *printer {
	return &printer{stdout: stdout, stderr: stderr, live: isTerminal(stderr)}
}

// progress shows line as the current progress. A plain output gets it only
// when force is set or a second has passed since the last one, so the
// final state of an operation should be passed with force.
func (p *printer) progress(line string, force bool) {
	if p.live {
		// \x1b[K clears what a longer previous line left on the right.
		_, _ = fmt.Fprint(p.stderr, "\r"+line+"\x1b[K")
		p.open, p.last = true, line
		return
	}
	if !force && time.Since(p.lastPlain) < plainEvery {
		return
	}
	p.lastPlain = time.Now()
	_, _ = fmt.Fprintln(p.stderr, line)
}

// endLine keeps the live progress line on screen as it stands and moves
// below it, so what follows does not overwrite it.
func (p *printer) endLine() {
	if p.open {
		_, _ = fmt.Fprintln(p.stderr)
		p.open = false
	}
}

// say prints a line of narration on stdout, below any progress line.
func (p *printer) say(format string, args ...any) {
	p.endLine()
	_, _ = fmt.Fprintf(p.stdout, format+"\n", args...)
}

// heading starts a step of the demo.
func (p *printer) heading(format string, args ...any) {
	p.endLine()
	_, _ = fmt.Fprintf(p.stdout, "\n== "+format+"\n", args...)
}

// megabytes is in decimal units, as transfer rates usually are.
func megabytes(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

// seconds shows a duration with the precision that matters at its size.
func seconds(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	case d >= 100*time.Microsecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
}

// rate is rows per second over d, 0 for no time at all.
func rate(rows int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(rows) / d.Seconds())
}
