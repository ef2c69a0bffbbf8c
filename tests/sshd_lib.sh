# shellcheck shell=bash
# A throw-away OpenSSH server on 127.0.0.1 for integration tests.
# Source after tests/lib.sh (which sets $T), then call sshd_start:
#
#   . "$TOP/tests/lib.sh"; . "$TOP/tests/sshd_lib.sh"
#   sshd_start || exit 0          # reports a FAIL and returns 1 when impossible
#   $SPARSYNC copy $(sparsync_ssh_opts) --remote-path $SPARSYNC img 127.0.0.1:$T/x
#   $SPARSYNC copy -e "ssh -F $SSH_CONFIG" --remote-path $SPARSYNC img sparsync-test:$T/x
#
# Exports SSHD_PORT, SSH_KEY (ed25519, authorized), SSH_RSA_KEY (RSA,
# authorized), SSH_OTHER_KEY (ed25519, NOT authorized), SSH_KNOWN_HOSTS
# (holds the server's ed25519 key for [127.0.0.1]:PORT), SSH_CONFIG (for
# OpenSSH's client: Host sparsync-test), SSH_USER, SSHD_DIR ($T/ssh).
# The EXIT trap is extended so the server is always killed.

SSHD_DIR=$T/ssh
SSHD_BIN=${SSHD_BIN:-/usr/sbin/sshd}
# A developer's agent must not change which keys the tests offer.
unset SSH_AUTH_SOCK SSH_AGENT_PID
trap 'sshd_stop; rm -rf "$T"' EXIT

# A port nobody listens on now (bind to port 0 and let the kernel choose).
_sshd_free_port() {
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
		return
	fi
	local p i
	for i in $(seq 1 50); do
		p=$(( 20000 + RANDOM % 40000 ))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	return 1
}

_sshd_keys() {
	local d=$SSHD_DIR
	ssh-keygen -q -t ed25519 -N '' -C sparsync-test-host -f "$d/host_ed25519" || return 1
	ssh-keygen -q -t ed25519 -N '' -C sparsync-test-user -f "$d/id_ed25519" || return 1
	ssh-keygen -q -t rsa -b 2048 -N '' -C sparsync-test-rsa -f "$d/id_rsa" || return 1
	ssh-keygen -q -t ed25519 -N '' -C sparsync-test-other -f "$d/id_other" || return 1
	cat "$d/id_ed25519.pub" "$d/id_rsa.pub" >"$d/authorized_keys"
	chmod 600 "$d"/host_ed25519 "$d"/id_ed25519 "$d"/id_rsa "$d"/id_other "$d/authorized_keys"
}

_sshd_config() { # PORT
	cat >"$SSHD_DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $1
HostKey $SSHD_DIR/host_ed25519
AuthorizedKeysFile $SSHD_DIR/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin yes
PidFile $SSHD_DIR/sshd.pid
RekeyLimit 32M
LogLevel ERROR
MaxStartups 100
MaxSessions 50
ClientAliveInterval 0
UseDNS no
# Bash reads ~/.bashrc for a command run by sshd unless it is a nested
# shell: SHLVL=1 makes it one, so a developer's (or the machine image's)
# shell startup, such as a pyenv init that costs half a second, neither
# slows nor changes what the tests run.
SetEnv SHLVL=1
EOF
}

# Start the server; 0 when it accepts connections, else prints why and 1.
sshd_start() {
	local missing=
	for c in "$SSHD_BIN" ssh ssh-keygen ssh-keyscan; do
		command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
	done
	if [ -n "$missing" ]; then
		fail "missing$missing (install openssh-server openssh-client)"
		return 1
	fi
	mkdir -p "$SSHD_DIR" && chmod 700 "$SSHD_DIR"
	[ -d /run/sshd ] || mkdir -p /run/sshd 2>/dev/null || true
	_sshd_keys || { fail "sshd_start: ssh-keygen failed"; return 1; }

	local port=
	for _ in 1 2 3 4 5; do
		port=$(_sshd_free_port) || continue
		_sshd_config "$port"
		rm -f "$SSHD_DIR/sshd.pid"
		# Daemonises after binding, so a bind failure shows as exit status.
		if "$SSHD_BIN" -f "$SSHD_DIR/sshd_config" -E "$SSHD_DIR/sshd.log"; then
			break
		fi
		port=
	done
	if [ -z "$port" ]; then
		fail "sshd_start: sshd would not start"; sed 's/^/    | /' "$SSHD_DIR/sshd.log" 2>/dev/null | tail -5
		return 1
	fi
	SSHD_PORT=$port

	# Wait until it answers and record its host key the way OpenSSH does.
	local i
	for i in $(seq 1 100); do
		if ssh-keyscan -T 2 -p "$SSHD_PORT" -t ed25519 127.0.0.1 >"$SSHD_DIR/known_hosts" 2>/dev/null &&
		   [ -s "$SSHD_DIR/known_hosts" ]; then
			break
		fi
		sleep 0.1
	done
	if ! [ -s "$SSHD_DIR/known_hosts" ]; then
		fail "sshd_start: sshd on port $SSHD_PORT does not answer"
		sed 's/^/    | /' "$SSHD_DIR/sshd.log" | tail -5
		return 1
	fi
	for i in $(seq 1 50); do [ -s "$SSHD_DIR/sshd.pid" ] && break; sleep 0.1; done

	SSH_USER=$(id -un)
	SSH_KEY=$SSHD_DIR/id_ed25519
	SSH_RSA_KEY=$SSHD_DIR/id_rsa
	SSH_OTHER_KEY=$SSHD_DIR/id_other
	SSH_KNOWN_HOSTS=$SSHD_DIR/known_hosts
	SSH_CONFIG=$SSHD_DIR/config
	cat >"$SSH_CONFIG" <<EOF
Host sparsync-test
	HostName 127.0.0.1
	Port $SSHD_PORT
	User $SSH_USER
	IdentityFile $SSH_KEY
	IdentitiesOnly yes
	UserKnownHostsFile $SSH_KNOWN_HOSTS
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	BatchMode yes
	LogLevel ERROR
EOF
	export SSHD_DIR SSHD_PORT SSH_USER SSH_KEY SSH_RSA_KEY SSH_OTHER_KEY SSH_KNOWN_HOSTS SSH_CONFIG
	return 0
}

# Kill the server (and the sessions it forked). Safe to call twice.
sshd_stop() {
	local pidf=${SSHD_DIR:-/nonexistent}/sshd.pid pid
	[ -s "$pidf" ] || return 0
	pid=$(cat "$pidf")
	rm -f "$pidf"
	[ -n "$pid" ] || return 0
	# Session processes are children of the listener; end them first.
	pkill -TERM -P "$pid" 2>/dev/null
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
	kill -KILL "$pid" 2>/dev/null
	return 0
}

# Options that point the built-in client at the test server.
sparsync_ssh_opts() {
	echo "-p $SSHD_PORT -i $SSH_KEY --known-hosts $SSH_KNOWN_HOSTS"
}
