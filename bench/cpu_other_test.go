//go:build !unix

package bench

import "time"

// processCPU is not measured here; the cpu-ns metrics are left out.
func processCPU() time.Duration { return 0 }
