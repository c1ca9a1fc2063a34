# machina %post: the administrator's directories when missing (never their
# contents), /run/machina now (tmpfiles.d makes it at boot), a daemon-reload.
# Never starts, stops, restarts or regenerates a VM.
for d in /etc/machina /etc/machina/machine.conf.d /etc/machina/launch; do
    [ -d "$d" ] || install -d -m 0755 "$d"
done
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create machina.conf || :
    systemctl daemon-reload || :
fi
