# machina %post: create what is missing, touch nothing else; never starts,
# stops, restarts or regenerates a VM.
for d in /etc/machina /etc/machina/machine.conf.d /etc/machina/launch; do
    [ -d "$d" ] || install -d -m 0755 "$d"
done
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create machina.conf || :
    systemctl daemon-reload || :
fi
