# machina %postun: on erase ($1 = 0), the directories %post made, when
# empty; machine files, plans, units and disks stay. Never stops a VM.
if [ "$1" = 0 ]; then
    for d in /etc/machina/launch /etc/machina/machine.conf.d /etc/machina /run/machina; do
        [ -d "$d" ] && rmdir --ignore-fail-on-non-empty "$d"
    done
    [ -d /run/systemd/system ] && systemctl daemon-reload
fi
:
