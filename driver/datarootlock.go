package driver

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// lockName is the file in the data root that one agent holds locked (flock)
// for as long as it serves the data root. Two agents on one data root would
// undo each other's work: each rolls back the records it finds "creating",
// which are the other's creates in flight.
const lockName = ".lock"

// errInUse is returned by openStore when another process holds the lock.
var errInUse = errors.New("data root is in use by another stickyvol agent")

// lockDataRoot takes the data root's lock without waiting and writes holder
// (who holds it, for the message another agent gives) into the lock file.
// The lock is released when the returned file is closed, or by the kernel
// when the process dies, so a crashed agent never leaves it held.
func lockDataRoot(root *os.Root, rootPath, holder string) (*os.File, error) {
	f, err := root.OpenFile(lockName, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the data root's lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		other, _ := io.ReadAll(io.LimitReader(f, 512))
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by %s (lock file %s); stop that agent or give this one another --data-root",
				errInUse, rootPath, strings.TrimSpace(string(other)), path.Join(rootPath, lockName))
		}
		return nil, fmt.Errorf("locking the data root: %w", err)
	}
	line := fmt.Sprintf("%s, pid %d, since %s\n", holder, os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	if err := writeHolder(f, line); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("writing the data root's lock file: %w", err)
	}
	return f, nil
}

func writeHolder(f *os.File, line string) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(line), 0); err != nil {
		return err
	}
	return f.Sync()
}
