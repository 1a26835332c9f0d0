package driver

import (
	"fmt"
	"os"
	"sync"
)

// dirSync makes the entries of one directory durable for many callers at
// once: a group commit. A caller needs an fsync that starts after its own
// changes were made; every caller that arrives while an fsync runs waits
// for it to end and then shares the next one, so N concurrent operations
// cost about two fsyncs of the directory instead of N.
//
// A failed fsync is sticky. After fsync has reported an error, Linux may
// have dropped the dirty state, and a later fsync can succeed without
// having written what the failed one held; no later caller can be told its
// change is durable, so every later call fails with the first error, and
// the store reports it through check (the agent's health) until a restart
// reads the directory afresh.
type dirSync struct {
	root *os.Root
	name string
	// fsync is what syncs the directory; tests replace it to count calls
	// or to fail.
	fsync func() error

	// syncing is held for the duration of one fsync, so fsyncs of the
	// directory run one at a time.
	syncing sync.Mutex
	mu      sync.Mutex
	// started counts the fsyncs begun, done those ended.
	started, done uint64
	// err is the first error of an fsync; once set, every call fails.
	err error
}

func newDirSync(root *os.Root, name string) *dirSync {
	d := &dirSync{root: root, name: name}
	d.fsync = func() error { return syncDir(root, name) }
	return d
}

// sync returns once every change to the directory's entries made before the
// call is durable.
func (d *dirSync) sync() error {
	d.mu.Lock()
	// The fsyncs numbered up to started may have begun before the
	// caller's change; the next one to begin cannot have.
	need := d.started + 1
	d.mu.Unlock()

	d.syncing.Lock()
	defer d.syncing.Unlock()
	d.mu.Lock()
	if d.err != nil || d.done >= need {
		err := d.err
		d.mu.Unlock()
		return err
	}
	d.started++
	d.mu.Unlock()

	err := d.fsync()

	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = d.started
	if err != nil && d.err == nil {
		d.err = fmt.Errorf("the volume records may not be durable, restart the agent: %w", err)
	}
	return d.err
}

// failed returns the sticky error, if an fsync has failed.
func (d *dirSync) failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}
