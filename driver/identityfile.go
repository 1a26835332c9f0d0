package driver

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
)

// identityName is the file in the data root that names it: written once, at
// the first start on an empty data root, and never changed.
const identityName = "identity"

// VolumeContextDataRoot is the volume context key (and so the PV's
// volumeAttributes key) that names the data root a volume was made on.
const VolumeContextDataRoot = "stickyvol.dev/data-root-id"

// VolumeContextBackend is the volume context key (and so the PV's
// volumeAttributes key) that names the backend holding the volume's data,
// "directory" or "btrfs", for `kubectl get pv -o yaml` and `stickyvol
// status -o wide` to show.
const VolumeContextBackend = "stickyvol.dev/backend"

// VolumeContextPool is the volume context key (and so the PV's
// volumeAttributes key) that names the pool holding the volume (pools.go).
// NodePublishVolume checks the identity in VolumeContextDataRoot against
// that pool's data root.
const VolumeContextPool = "stickyvol.dev/pool"

// VolumeContextPath is the volume context key (and so the PV's
// volumeAttributes key) that holds where the volume's data lies on its
// node, for `stickyvol status` and people to read: the pod sees it, and
// the DaemonSet mounts each data root at the host's own path.
const VolumeContextPath = "stickyvol.dev/path"

// VolumeContextFsType is the volume context key that names the file system
// of an image volume (ext4, xfs); the provisioner writes it into the PV's
// spec.csi.fsType too.
const VolumeContextFsType = "stickyvol.dev/fs-type"

var identityPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// loadIdentity returns the data root's identity, making one if the data
// root has none.
//
// Why: a node can come back under the same name with an empty data root (a
// replaced disk, a reinstalled machine). Its PVs still name the node, so
// kubelet would publish their volumes there; without the records the driver
// says NotFound, which tells the user nothing. With the identity in each
// PV, the driver can say what happened: the volume was made on another data
// root, and its data is not on this one.
func (s *store) loadIdentity() (string, error) {
	data, err := s.root.ReadFile(identityName)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(data))
		if !identityPattern.MatchString(id) {
			return "", fmt.Errorf("data root identity file %s/%s holds %q, not 32 hex digits", s.rootPath, identityName, id)
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("reading the data root's identity: %w", err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	// Whole or not at all: a crash must not leave half an identity.
	tmp := tmpPrefix + identityName
	if err := s.writeSynced(tmp, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("writing the data root's identity: %w", err)
	}
	if err := s.root.Rename(tmp, identityName); err != nil {
		return "", fmt.Errorf("writing the data root's identity: %w", err)
	}
	if err := s.syncDir("."); err != nil {
		return "", err
	}
	return id, nil
}
