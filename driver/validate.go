package driver

import (
	"fmt"
	"io/fs"
	"maps"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// This file holds pure request validation: no I/O, no driver state. Every
// check returns a status error with code InvalidArgument and a message that
// says what to change, so handlers can return it as is.

// MaxVolumeIDLength is the longest volume name (and so volume ID) accepted:
// the 128 bytes CSI recommends for strings that a CO generates.
const MaxVolumeIDLength = 128

// volumeIDPattern is the strict form of a volume name, which is used
// unchanged as the volume ID and as a file name under the data root:
// an ASCII letter or digit, then up to 127 letters, digits, '.', '_' or '-'.
// It accepts Kubernetes PV names (pvc-<uuid>, DNS subdomains) and
// csi-sanity's generated names (which carry upper-case hex), and it can
// never name "", ".", "..", a hidden file, or anything with a '/' in it, so
// joining it under a directory cannot leave that directory.
var volumeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// nodeIDPattern is the form of a Kubernetes label value, because the node ID
// becomes the value of the TopologyKey label in PV node affinity and on the
// Node object: at most 63 characters.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// StorageClass parameters.
const (
	// ParamDirectoryMode is the permission of a new volume's directory,
	// in octal ("0777", "0750", "2775" is refused).
	ParamDirectoryMode = "directoryMode"
	// ParamSizeEnforcement says whether a volume's size must be a limit:
	// SizeEnforcementRequired refuses nodes whose volumes are directories
	// (the size only bookkeeping); SizeEnforcementBestEffort, the default,
	// takes the best the node has.
	ParamSizeEnforcement = "sizeEnforcement"
	// ParamPool names the pool (pools.go) whose data root holds the
	// volume; without it, DefaultPool. A node without the pool has no room
	// for the class: CreateVolume answers ResourceExhausted (NoPoolMessage)
	// and GetCapacity 0.
	ParamPool = "pool"
	// ParamVolumeType chooses how a volume is kept: VolumeTypeImage for a
	// file system image of its own (image.go); without it, the pool's
	// backend (directory or btrfs).
	ParamVolumeType = "volumeType"
	// ParamFsType is the file system of a VolumeTypeImage volume: FsExt4
	// (DefaultFsType) or FsXFS. It implies volumeType image.
	ParamFsType = "fsType"
	// metadataPrefix starts the keys the external-provisioner convention
	// reserves for metadata (--extra-create-metadata) and secrets; they are
	// accepted and never interpreted as options.
	metadataPrefix    = "csi.storage.k8s.io/"
	paramPVCName      = metadataPrefix + "pvc/name"
	paramPVCNamespace = metadataPrefix + "pvc/namespace"
	paramPVName       = metadataPrefix + "pv/name"
	// paramStandardFsType is the file system key external-provisioner
	// classes use; it means what ParamFsType means.
	paramStandardFsType = metadataPrefix + "fstype"
)

// Values of ParamSizeEnforcement.
const (
	SizeEnforcementRequired   = "required"
	SizeEnforcementBestEffort = "bestEffort"
)

// VolumeTypeImage is the ParamVolumeType value for a volume that is a
// file system in an image file, loop-mounted: its size holds on any data
// root.
const VolumeTypeImage = "image"

// DefaultFsType is the file system an image volume is formatted with.
const DefaultFsType = FsExt4

// NotEnforcedMessage starts the message of the ResourceExhausted error with
// which CreateVolume refuses a sizeEnforcement: required volume on a node
// that cannot enforce sizes; the provisioner recognises it to explain the
// refusal on the claim.
const NotEnforcedMessage = "this node cannot enforce volume sizes"

// NoPoolMessage starts the message of the ResourceExhausted error with which
// CreateVolume refuses a volume whose class names a pool this node does not
// have; the provisioner recognises it to explain the refusal on the claim.
const NoPoolMessage = "this node has no pool"

// DefaultDirectoryMode is the permission of a volume directory when the
// StorageClass does not set directoryMode: world-writable like the peer
// hostpath drivers, so a pod running as any user can write without fsGroup.
const DefaultDirectoryMode fs.FileMode = 0o777

// DefaultVolumeSize is the size accounted for a volume whose request has no
// capacity range (or only a limit above it).
const DefaultVolumeSize int64 = 1 << 30

// volumeParams is the parsed form of CreateVolume parameters.
type volumeParams struct {
	DirectoryMode fs.FileMode
	// SizeRequired: sizeEnforcement is required.
	SizeRequired bool
	// Pool is the pool parameter; "" means DefaultPool (see pool).
	Pool string
	// Image: volumeType is image; FsType is then its file system.
	Image  bool
	FsType string
	// Block: the capabilities ask for the block access type (blockAccess),
	// not a parameter.
	Block        bool
	PVCName      string
	PVCNamespace string
	PVName       string
}

// pool is the name of the pool the parameters ask for.
func (p volumeParams) pool() string {
	if p.Pool == "" {
		return DefaultPool
	}
	return p.Pool
}

// validateVolumeID checks a volume ID or name against volumeIDPattern.
// what names the field in the message ("volume ID", "name").
func validateVolumeID(id, what string) error {
	switch {
	case id == "":
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	case len(id) > MaxVolumeIDLength:
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long, at most %d are allowed",
			what, len(id), MaxVolumeIDLength)
	case !volumeIDPattern.MatchString(id):
		return status.Errorf(codes.InvalidArgument,
			"%s %q is not valid: it must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
			what, id)
	}
	return nil
}

// validateNodeID checks a node ID (Config.NodeID) against nodeIDPattern.
func validateNodeID(id string) error {
	if !nodeIDPattern.MatchString(id) {
		return fmt.Errorf("node ID %q is not valid: it becomes the value of the %s label, "+
			"so it must be 1-63 letters, digits, '.', '_' or '-' and start and end with a letter or digit",
			id, TopologyKey)
	}
	return nil
}

// parseParameters validates StorageClass parameters. Unknown keys are
// refused with a message that lists the accepted ones.
func parseParameters(params map[string]string) (volumeParams, error) {
	p := volumeParams{DirectoryMode: DefaultDirectoryMode}
	// Sorted, so the message names the same key every time.
	for _, key := range slices.Sorted(maps.Keys(params)) {
		value := params[key]
		switch {
		case key == ParamDirectoryMode:
			mode, err := parseDirectoryMode(value)
			if err != nil {
				return volumeParams{}, err
			}
			p.DirectoryMode = mode
		case key == ParamSizeEnforcement:
			switch value {
			case SizeEnforcementRequired:
				p.SizeRequired = true
			case SizeEnforcementBestEffort:
			default:
				return volumeParams{}, status.Errorf(codes.InvalidArgument,
					"parameter %s=%q: want %q or %q (the default)", ParamSizeEnforcement, value,
					SizeEnforcementRequired, SizeEnforcementBestEffort)
			}
		case key == ParamPool:
			if err := ValidatePoolName(value); err != nil {
				return volumeParams{}, status.Errorf(codes.InvalidArgument, "parameter %s: %v", ParamPool, err)
			}
			p.Pool = value
		case key == ParamVolumeType:
			if value != VolumeTypeImage {
				return volumeParams{}, status.Errorf(codes.InvalidArgument,
					"parameter %s=%q: the only type is %q; leave it out for the pool's own backend (directory or btrfs)",
					ParamVolumeType, value, VolumeTypeImage)
			}
			p.Image = true
		case key == ParamFsType || key == paramStandardFsType:
			if _, ok := imageFileSystems[value]; !ok {
				return volumeParams{}, status.Errorf(codes.InvalidArgument,
					"parameter %s=%q: image volumes can be formatted %s", key, value, fileSystemNames())
			}
			p.FsType = value
		case key == paramPVCName:
			p.PVCName = value
		case key == paramPVCNamespace:
			p.PVCNamespace = value
		case key == paramPVName:
			p.PVName = value
		case strings.HasPrefix(key, metadataPrefix):
			// Other metadata (secrets references, future keys): accepted.
		default:
			return volumeParams{}, status.Errorf(codes.InvalidArgument,
				"unknown StorageClass parameter %q; accepted parameters are %q, %q, %q, %q, %q and keys under %q",
				key, ParamDirectoryMode, ParamSizeEnforcement, ParamPool, ParamVolumeType, ParamFsType, metadataPrefix)
		}
	}
	// A class that names a file system asks for a volume that is one: only
	// an image volume has a file system of its own. So fsType (or the
	// csi.storage.k8s.io/fstype key classes of block-backed drivers carry)
	// makes an image volume without volumeType.
	switch {
	case p.FsType != "":
		p.Image = true
	case p.Image:
		p.FsType = DefaultFsType
	}
	return p, nil
}

// parseDirectoryMode parses an octal permission such as "0770" or "755".
// Only the permission bits are accepted: setuid, setgid and sticky bits
// would change who owns new files in a volume or who may delete them, which
// is not something a StorageClass of this driver should decide.
func parseDirectoryMode(value string) (fs.FileMode, error) {
	// Base 8 without prefixes: "0o755", "+755" and "7_55" are refused.
	bits, err := strconv.ParseUint(value, 8, 32)
	if err != nil {
		return 0, status.Errorf(codes.InvalidArgument,
			"parameter %s=%q is not an octal permission such as \"0777\" or \"0750\"", ParamDirectoryMode, value)
	}
	if bits&^0o777 != 0 {
		return 0, status.Errorf(codes.InvalidArgument,
			"parameter %s=%q sets bits other than rwx permissions; setuid, setgid and sticky bits are not allowed",
			ParamDirectoryMode, value)
	}
	return fs.FileMode(bits), nil
}

// volumeSize picks the size of a new volume from a capacity range:
// required_bytes when set; otherwise DefaultVolumeSize, lowered to
// limit_bytes when a smaller limit is set.
func volumeSize(r *csi.CapacityRange) (int64, error) {
	required, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	switch {
	case required < 0 || limit < 0:
		return 0, status.Errorf(codes.InvalidArgument,
			"capacity range must not be negative (required_bytes=%d, limit_bytes=%d)", required, limit)
	case limit > 0 && required > limit:
		return 0, status.Errorf(codes.InvalidArgument,
			"capacity range is empty: required_bytes=%d is larger than limit_bytes=%d", required, limit)
	case required > 0:
		return required, nil
	case limit > 0 && limit < DefaultVolumeSize:
		return limit, nil
	}
	return DefaultVolumeSize, nil
}

// fitsRange reports whether an existing volume of size bytes satisfies a
// capacity range, which is what makes a repeated CreateVolume compatible.
func fitsRange(size int64, r *csi.CapacityRange) bool {
	return size >= r.GetRequiredBytes() && (r.GetLimitBytes() == 0 || size <= r.GetLimitBytes())
}

// checkCapability reports why a capability is not supported, or nil.
// Supported: the mount or the block access type with a single-node access
// mode. A mount's fs type is ignored, since a bind mount has no file
// system of its own to choose (an image volume's comes from the class);
// mount flags are limited to what a bind mount can apply
// (parseMountFlags). A block capability has neither: CSI keeps fs type and
// mount flags in the mount access type only.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume capability is required")
	}
	switch c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount, *csi.VolumeCapability_Block:
	default:
		return status.Error(codes.InvalidArgument, "volume capability must have the mount or the block access type")
	}
	if _, _, err := parseMountFlags(c.GetMount().GetMountFlags()); err != nil {
		return err
	}
	switch mode := c.GetAccessMode().GetMode(); mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		return nil
	case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		return status.Errorf(codes.InvalidArgument,
			"access mode %s is not supported: hostpath volumes are node-local, so they can be used "+
				"from one node only (use ReadWriteOnce, ReadOnlyMany on one node, or ReadWriteOncePod)", mode)
	default:
		return status.Errorf(codes.InvalidArgument, "access mode %s is not supported", mode)
	}
}

// blockAccess reports whether capabilities (checked already) ask for a
// block volume. A volume is one or the other, so a list that mixes the two
// access types is InvalidArgument.
func blockAccess(caps []*csi.VolumeCapability) (bool, error) {
	block := 0
	for _, c := range caps {
		if c.GetBlock() != nil {
			block++
		}
	}
	if block > 0 && block < len(caps) {
		return false, status.Error(codes.InvalidArgument,
			"volume capabilities mix the block and the mount access types; a volume is either a raw device or a file system")
	}
	return block > 0, nil
}

// checkBlockParams refuses parameters that ask a block volume for a file
// system: it has none, and taking the class's fsType silently would hide
// a class that was meant for file system volumes.
func checkBlockParams(p volumeParams) error {
	if !p.Image {
		return nil
	}
	return status.Errorf(codes.InvalidArgument,
		"block volumes are raw devices without a file system, and the parameters ask for one (%s=%s): "+
			"use a class without %s, %s or %s for volumeMode: Block",
		ParamFsType, p.FsType, ParamVolumeType, ParamFsType, paramStandardFsType)
}

// blockSize rounds a block volume's size up to whole 512-byte sectors,
// which is what a loop device shows of its file: a size in between would
// give a device smaller than the volume. A limit below the rounded size is
// OutOfRange.
func blockSize(size int64, r *csi.CapacityRange) (int64, error) {
	const sector = 512
	if size > math.MaxInt64-sector {
		return 0, status.Errorf(codes.OutOfRange, "a block volume of %d bytes is larger than a loop device can be", size)
	}
	rounded := (size + sector - 1) / sector * sector
	if limit := r.GetLimitBytes(); limit > 0 && rounded > limit {
		return 0, status.Errorf(codes.OutOfRange,
			"block volumes are whole 512-byte sectors; %d bytes rounds up to %d, above limit_bytes=%d", size, rounded, limit)
	}
	return rounded, nil
}

// checkCapabilities checks a non-empty list of capabilities.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// validateTargetPath checks a NodePublish/NodeUnpublish target path: set,
// absolute, clean (so it contains no "..", "." or "//" that could hide where
// it points), not "/" and not inside the data root, where it could cover or
// delete a volume or a record.
func validateTargetPath(target, dataRoot string) error {
	switch {
	case target == "":
		return status.Error(codes.InvalidArgument, "target path is required")
	case !filepath.IsAbs(target):
		return status.Errorf(codes.InvalidArgument, "target path %q must be absolute", target)
	case filepath.Clean(target) != target:
		return status.Errorf(codes.InvalidArgument,
			"target path %q is not clean (it would be %q): no '..', '.', '//' or trailing '/'",
			target, filepath.Clean(target))
	case target == "/":
		return status.Error(codes.InvalidArgument, "target path must not be /")
	case PathsOverlap(target, dataRoot):
		return status.Errorf(codes.InvalidArgument,
			"target path %q must not be inside the data root %s or contain it", target, dataRoot)
	}
	return nil
}
